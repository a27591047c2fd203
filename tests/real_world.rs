//! Real configs written by others (`../shared/real-world-xds/`, read in
//! place, never copied): `remora check` runs over every bootstrap and example.
//! No crash, no hang; each file passes, or every error names a field path or
//! an `@type`. The table it prints goes into README.md.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_remora");

fn corpus() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real-world-xds");
    assert!(
        dir.is_dir(),
        "the real-world corpus is missing at {} (it lives beside the repository, in shared/)",
        dir.display()
    );
    dir
}

fn envoy_verdicts(dir: &Path) -> std::collections::HashMap<String, String> {
    let text = std::fs::read_to_string(dir.join("ENVOY_VERDICTS.tsv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let file = f.next()?.rsplit('/').next()?.to_string();
            let _version = f.next()?;
            Some((file, f.next()?.to_string()))
        })
        .collect()
}

#[test]
fn every_real_world_bootstrap_is_accepted_or_rejected_with_field_paths() {
    let dir = corpus();
    let verdicts = envoy_verdicts(&dir);
    let mut files: Vec<PathBuf> = ["envoy-configs", "istio-bootstraps"]
        .iter()
        .flat_map(|sub| {
            std::fs::read_dir(dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
        })
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 60,
        "expected the whole corpus, found {} files",
        files.len()
    );

    let mut table = String::from("| file | Envoy 1.40 | remora | first unsupported part |\n|---|---|---|---|\n");
    let mut failures = Vec::new();
    let (mut ok, mut rejected) = (0, 0);
    for file in &files {
        let started = Instant::now();
        let mut child = Command::new(BIN)
            .args(["check", "--config"])
            .arg(file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn remora check");
        // No hang: each check gets 10 s.
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("remora check hung on {}", file.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = child.wait_with_output().expect("output");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let envoy = verdicts
            .get(&name)
            .map(|v| v.split(':').next().unwrap_or(v).to_string())
            .unwrap_or("-".into());
        match status.code() {
            Some(0) => {
                ok += 1;
                table.push_str(&format!("| {name} | {envoy} | OK | |\n"));
            }
            Some(2) => {
                rejected += 1;
                let errors: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("error: ")).collect();
                if errors.is_empty() {
                    failures.push(format!("{name}: rejected without an error line:\n{stdout}{stderr}"));
                }
                for e in &errors {
                    // A field path ("a.b[0].c: ...") or an unknown-field/@type message naming it.
                    let named = e.split(": ").next().is_some_and(|p| !p.contains(' ') && !p.is_empty())
                        || e.contains("unrecognized field name '")
                        || e.contains("@type");
                    if !named {
                        failures.push(format!("{name}: error without a field path: {e}"));
                    }
                }
                let first = errors.first().map(|e| e.replace('|', "\\|")).unwrap_or_default();
                table.push_str(&format!(
                    "| {name} | {envoy} | rejected ({} errors) | `{first}` |\n",
                    errors.len()
                ));
            }
            other => failures.push(format!("{name}: exit {other:?} (crash?)\n{stdout}{stderr}")),
        }
    }
    table.push_str(&format!(
        "\n{ok} accepted, {rejected} rejected, of {} files.\n",
        files.len()
    ));
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-world-table.md");
    let _ = std::fs::write(&out, &table);
    println!("{table}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The Istio config dumps are not bootstraps: their resources are what xDS
/// will deliver. Until the ADS client lands, `check` must still fail cleanly
/// on them (no crash), naming what it does not understand.
#[test]
fn istio_config_dumps_fail_cleanly_as_bootstraps() {
    let dir = corpus().join("istio-config-dumps");
    for entry in std::fs::read_dir(&dir).expect("dumps").flatten() {
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(entry.path())
            .output()
            .expect("run");
        let code = out.status.code();
        assert!(
            matches!(code, Some(0) | Some(2)),
            "{}: exit {code:?}",
            entry.path().display()
        );
    }
}
