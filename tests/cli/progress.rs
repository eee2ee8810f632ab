//! Progress of import, export, verify and backup on standard error when it is no terminal: summary lines
//! (`--progress-every`), none with `--quiet`.

use crate::common::files::DataDir;
use crate::common::process::spawn_process;
use crate::{code, run, sample};

#[tokio::test]
async fn long_commands_report_progress_unless_quiet() {
    let dir = DataDir::temp();
    let d = dir.path().to_str().unwrap();
    let file = sample();
    let f = file.to_str().unwrap();
    let out = run(
        &[
            "import",
            "--data-dir",
            d,
            "--batch-size",
            "10",
            "--progress-every",
            "0s",
            f,
        ],
        &[],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("import: 10 records of 41 (24%)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("ETA"), "{}", out.stderr);
    let out = run(
        &[
            "export",
            "--data-dir",
            d,
            "--progress-every",
            "0s",
            "-o",
            "/dev/null",
        ],
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("export: 40 seqs of 40 (100%)"),
        "{}",
        out.stderr
    );
    let out = run(&["verify", "--data-dir", d, "--progress-every", "0s"], &[]).await;
    assert_eq!(code(&out), 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("verify: 1 files of 1 (100%)"),
        "{}",
        out.stderr
    );
    let out = run(
        &[
            "verify",
            "--data-dir",
            d,
            "--progress-every",
            "0s",
            "--quiet",
        ],
        &[],
    )
    .await;
    assert!(!out.stderr.contains("verify:"), "{}", out.stderr);
    let out = run(&["backup", "--data-dir", d, "--progress-every", "0s"], &[]).await;
    assert_eq!(code(&out), 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("backup: 1 files of 1 (100%)"),
        "{}",
        out.stderr
    );
    let out = run(&["backup", "--data-dir", d, "--quiet"], &[]).await;
    assert_eq!(code(&out), 0, "{}{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("backup:"), "{}", out.stderr);
    let out = run(
        &["export", "--data-dir", d, "--progress-every", "0s", "-q"],
        &[],
    )
    .await;
    assert!(out.stderr.is_empty(), "quiet: {}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 40);
    // The summary comes with a server too (online).
    let server = spawn_process(dir.path(), &[]).await;
    let out = run(
        &[
            "export",
            "--url",
            &server.base,
            "--progress-every",
            "0s",
            "-o",
            "/dev/null",
        ],
        &[],
    )
    .await;
    assert!(out.stderr.contains("export: 40 seqs"), "{}", out.stderr);
    server.stop().await;
}
