//! Turns the world features into cfgs the crate can test in one place:
//! `cnp_world = "<feature>"` and `cnp_one_world` when exactly one is enabled,
//! `cnp_world_conflict` when several are, `cnp_world_none` when none is; `cnp_wit_0_2` for a
//! condition hook built against `cnp:plugin@0.2.0` (feature `wit-0-2`). The `executor` world
//! exists only in `cnp:plugin@0.3.0`, so it needs no version feature.

const WORLDS: [&str; 4] = ["retry-strategy", "notifier", "condition-hook", "executor"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cnp_world, values(\"retry-strategy\", \"notifier\", \"condition-hook\", \"executor\"))");
    println!("cargo::rustc-check-cfg=cfg(cnp_one_world)");
    println!("cargo::rustc-check-cfg=cfg(cnp_world_conflict)");
    println!("cargo::rustc-check-cfg=cfg(cnp_world_none)");
    println!("cargo::rustc-check-cfg=cfg(cnp_wit_0_2)");
    // `wit-0-2` matters to the condition hook only (0.2's other worlds are 0.1's).
    if std::env::var_os("CARGO_FEATURE_WIT_0_2").is_some()
        && std::env::var_os("CARGO_FEATURE_CONDITION_HOOK").is_some()
    {
        println!("cargo::rustc-cfg=cnp_wit_0_2");
    }
    let enabled: Vec<&str> = WORLDS
        .iter()
        .copied()
        .filter(|world| {
            let var = format!("CARGO_FEATURE_{}", world.to_uppercase().replace('-', "_"));
            std::env::var_os(var).is_some()
        })
        .collect();
    match enabled.as_slice() {
        [] => println!("cargo::rustc-cfg=cnp_world_none"),
        [world] => {
            println!("cargo::rustc-cfg=cnp_world=\"{world}\"");
            println!("cargo::rustc-cfg=cnp_one_world");
        }
        _ => println!("cargo::rustc-cfg=cnp_world_conflict"),
    }
}
