//! Manifest hot reload on the real `cnp serve`: files added, edited, broken, fixed and deleted
//! while the service runs. Observed through the database and the service log.

mod support;

use support::*;

fn job_yaml(name: &str, priority: u8, expression: &str) -> String {
    format!(
        "name: {name}\nprompt: \"prompt of {name}\"\npriority: {priority}\n\
         schedule: {{ type: cron, expression: \"{expression}\" }}\n"
    )
}

#[test]
fn added_edited_broken_fixed_and_deleted_files_take_effect_without_a_restart() {
    let env = Env::new(ConfigOpts::default());
    env.manifest("a.yaml", &job_yaml("alpha", 5, "0 9 * * *"));
    let mut cnp = env.start();
    cnp.wait_log("watching the manifest folder");
    let alpha = cnp.wait_for("alpha", || env.job("alpha"));

    // Add: a new file creates its job.
    env.manifest("b.yaml", &job_yaml("beta", 3, "0 10 * * *"));
    let beta = cnp.wait_for("beta created", || env.job("beta"));
    assert_eq!(beta.priority, 3);

    // Edit: the job is updated in place (same id, so its history stays).
    env.manifest("a.yaml", &job_yaml("alpha", 9, "30 9 * * *"));
    let edited = cnp.wait_for("alpha updated", || {
        env.job("alpha").filter(|j| j.priority == 9)
    });
    assert_eq!(
        edited.id, alpha.id,
        "an edit keeps the job (and its history)"
    );
    assert!(
        edited.schedule.contains("30 9 * * *"),
        "{}",
        edited.schedule
    );

    // Break: the error names the file and line; the last good version stays in force.
    let broken = env.manifest(
        "a.yaml",
        "name: alpha\nprompt: \"x\"\npriority: 9\nschedule: { type: cron, expression: \"61 9 * * *\" }\n",
    );
    cnp.wait_log(&format!("manifest error: {}:4", broken.display()));
    let still = env.job("alpha").expect("alpha kept");
    assert_eq!(still.id, alpha.id);
    assert!(
        still.schedule.contains("30 9 * * *"),
        "last good version kept: {}",
        still.schedule
    );
    cnp.assert_running();

    // Fix: applied again.
    env.manifest("a.yaml", &job_yaml("alpha", 2, "45 9 * * *"));
    let fixed = cnp.wait_for("alpha fixed", || {
        env.job("alpha").filter(|j| j.priority == 2)
    });
    assert_eq!(fixed.id, alpha.id);

    // Delete: the file's jobs go; the other file's stay.
    std::fs::remove_file(env.jobs.join("b.yaml")).unwrap();
    cnp.wait_for("beta deleted", || env.job("beta").is_none().then_some(()));
    assert!(env.job("alpha").is_some());
}

#[test]
fn an_editor_style_save_is_applied_once_after_the_burst() {
    let env = Env::new(ConfigOpts::default());
    let mut cnp = env.start();
    cnp.wait_log("watching the manifest folder");
    // Write a temp file, then rename it over the target, as editors do; a half-written file is
    // never seen because only the rename exposes it.
    let tmp = env.jobs.join(".gamma.yaml.swp");
    std::fs::write(&tmp, job_yaml("gamma", 4, "0 8 * * *")).unwrap();
    std::fs::rename(&tmp, env.jobs.join("gamma.yaml")).unwrap();
    let gamma = cnp.wait_for("gamma", || env.job("gamma"));
    assert_eq!(gamma.priority, 4);
    // A stored prompt added later is picked up too, and a job using it then loads.
    std::fs::create_dir_all(env.jobs.join("prompts")).unwrap();
    std::fs::write(
        env.jobs.join("prompts/daily.md"),
        "# Daily\nWrite the daily report.\n",
    )
    .unwrap();
    env.manifest(
        "delta.yaml",
        "name: delta\nprompt_id: daily\nschedule: { type: cron, expression: \"0 7 * * *\" }\n",
    );
    let delta = cnp.wait_for("delta", || env.job("delta"));
    assert_eq!(delta.prompt_id.as_deref(), Some("daily"));
}
