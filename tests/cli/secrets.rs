//! Secrets echoed by a step are masked in everything bake prints or writes;
//! file secrets must be regular files.

use std::process::Command;

use crate::harness::{Run, bake, bake_cmd, finish};
use crate::run::{home_with_busybox, project};

const FILE_VALUE: &str = "file-s3cr3t-value-9f2c";
const ENV_VALUE: &str = "env-s3cr3t-value-41ab";

/// Every form of the two secrets that must not appear anywhere.
fn forbidden() -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
    let mut out = Vec::new();
    for value in [FILE_VALUE, ENV_VALUE] {
        out.push(value.to_owned());
        for v in [value.to_owned(), format!("{value}\n")] {
            out.push(STANDARD.encode(&v));
            out.push(STANDARD_NO_PAD.encode(&v));
            out.push(URL_SAFE.encode(&v));
        }
    }
    out
}

fn build(dir: &std::path::Path, home: &std::path::Path, progress: &str, secret_file: &std::path::Path) -> Run {
    finish(
        bake_cmd(dir, home)
            .args(["build", "--no-cache", "--progress", progress, "--secret"])
            .arg(format!("id=file,src={}", secret_file.display()))
            .args(["--secret", "id=env,env=BAKE_TEST_SECRET"])
            .env("BAKE_TEST_SECRET", ENV_VALUE),
    )
}

#[test]
fn a_secret_echoed_by_a_step_is_masked_everywhere() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "leaky" from="busybox" {
    run "cat /run/secrets/file; base64 /run/secrets/file; cat /run/secrets/env; echo; base64 /run/secrets/env; printf 'x%s' \"$(cat /run/secrets/env)\" | base64; echo >&2 \"err $(cat /run/secrets/file)\"; exit 1" {
        secret "file"
        secret "env"
    }
}
"#,
    );
    let secret_file = p.path().join("token.txt");
    std::fs::write(&secret_file, format!("{FILE_VALUE}\n")).expect("write");
    for progress in ["plain", "json", "tty"] {
        let failed = build(p.path(), home.path(), progress, &secret_file);
        assert_eq!(failed.code, 1, "{}", failed.render());
        let all = failed.render();
        // The step did print (masked) lines, and the failure shows its tail.
        assert!(all.contains("****"), "{progress}: nothing masked:\n{all}");
        assert!(all.contains("err ****"), "{progress}: no masked tail:\n{all}");
        assert!(all.contains("last lines of output"), "{progress}:\n{all}");
        for form in forbidden() {
            assert!(!all.contains(&form), "{progress}: `{form}` printed:\n{all}");
        }
    }
    // Nor in any file bake wrote: the store, explain records, scratch.
    for form in forbidden() {
        let grep = Command::new("grep").args(["-r", "-l", "-a", "-F", &form]).arg(home.path()).output().expect("grep");
        assert!(grep.stdout.is_empty(), "`{form}` found in: {}", String::from_utf8_lossy(&grep.stdout));
    }
}

#[test]
fn a_file_secret_must_be_a_regular_file() {
    let p = project(
        r#"
stage "s" from="scratch" {
    copy "build.kdl" to="/"
}
"#,
    );
    let home = tempfile::tempdir().expect("tempdir");
    let fifo = p.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    for (src, kind) in [(p.path().to_path_buf(), "a directory"), ("/dev/sda".into(), "a device"), (fifo, "a FIFO")] {
        let src = if src.exists() { src } else { "/dev/null".into() };
        let spec = format!("id=key,src={}", src.display());
        let failed = bake(p.path(), home.path(), &["build", "--secret", &spec]);
        assert_eq!(failed.code, 1, "{}", failed.render());
        assert!(
            failed.stderr.contains(&format!("secret `key` is {kind}: {}", src.display())),
            "{kind}: {}",
            failed.stderr
        );
        assert!(failed.stderr.contains("bake::exec::secret_not_file"), "{}", failed.stderr);
    }
}
