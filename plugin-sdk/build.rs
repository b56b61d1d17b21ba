//! Turns the world features into cfgs the crate can test in one place:
//! `cnp_world = "<feature>"` and `cnp_one_world` when exactly one is enabled,
//! `cnp_world_conflict` when several are, `cnp_world_none` when none is.

const WORLDS: [&str; 3] = ["retry-strategy", "notifier", "condition-hook"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cnp_world, values(\"retry-strategy\", \"notifier\", \"condition-hook\"))");
    println!("cargo::rustc-check-cfg=cfg(cnp_one_world)");
    println!("cargo::rustc-check-cfg=cfg(cnp_world_conflict)");
    println!("cargo::rustc-check-cfg=cfg(cnp_world_none)");
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
