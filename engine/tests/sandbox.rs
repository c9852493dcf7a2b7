//! The sandbox against the real kernel: namespaces, mounts, users, the
//! upper folder, cancellation, a killed parent, both backends.
//!
//! The sandbox re-executes its own binary (`/proc/self/exe __bake-sandbox`),
//! so this test binary has its own `main` (`harness = false`) that answers
//! that first, then runs the tests in order. Arguments that do not start
//! with `-` filter tests by name, as with libtest. It runs as root, or as a
//! user with subordinate ids (rootless: it enters a user namespace first, as
//! bake does); without either the run fails, saying so.
//!
//! The root filesystem is made from the host's static `/bin/busybox`.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bake_engine::lang::Network;
use bake_engine::sandbox::{self, Backend, Mount, OutputStream, RunSpec, SandboxError};
use tokio_util::sync::CancellationToken;

/// How long a poll for something that must happen may take.
const BOUND: Duration = Duration::from_secs(20);

/// The busybox applets the tests use.
const APPLETS: &[&str] = &[
    "sh", "ls", "echo", "cat", "id", "hostname", "ps", "sleep", "touch", "rm", "mkdir", "true", "ip", "pwd", "grep",
    "cut", "tr", "tail", "chmod", "chown", "ln", "wc", "head", "od", "stat", "test", "kill", "mount", "mknod", "dd",
    "unshare", "nc",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(sandbox::HELPER_ARG) {
        std::process::exit(sandbox::helper_main());
    }
    if args.get(1).map(String::as_str) == Some(PARENT_ARG) {
        killable_parent(&args[2..]);
        return ExitCode::SUCCESS;
    }
    let tests: &[(&str, fn())] = &[
        ("output_and_exit_code", output_and_exit_code),
        ("pid1_hostname_proc_dev", pid1_hostname_proc_dev),
        ("many_layers", many_layers),
        ("users_from_the_image", users_from_the_image),
        ("missing_cwd_is_created", missing_cwd_is_created),
        ("writes_land_in_upper_overlay", writes_land_in_upper_overlay),
        ("copy_backend_writes_the_same_upper", copy_backend_writes_the_same_upper),
        ("network_none_has_only_loopback_up", network_none_has_only_loopback_up),
        ("cache_persists_and_secret_is_read_only", cache_persists_and_secret_is_read_only),
        ("setup_errors_are_typed", setup_errors_are_typed),
        ("cancel_kills_the_tree_and_leaves_no_mount", cancel_kills_the_tree_and_leaves_no_mount),
        ("killed_parent_takes_the_tree_down", killed_parent_takes_the_tree_down),
        ("probe_finds_overlay", probe_finds_overlay),
        ("proc_sys_is_read_only", proc_sys_is_read_only),
        ("block_devices_do_not_open", block_devices_do_not_open),
        ("masked_and_read_only_paths", masked_and_read_only_paths),
        ("seccomp_no_new_privs_and_docker_capabilities", seccomp_no_new_privs_and_docker_capabilities),
        ("no_nested_user_namespaces", no_nested_user_namespaces),
        ("insecure_lifts_the_confinement", insecure_lifts_the_confinement),
        ("private_network_reaches_out_not_the_host_loopback", private_network_reaches_out_not_the_host_loopback),
        ("packet_socket_sees_no_host_traffic", packet_socket_sees_no_host_traffic),
        ("nat_ends_with_the_step", nat_ends_with_the_step),
        ("missing_nat_is_a_clear_error", missing_nat_is_a_clear_error),
        ("measure_trivial_step", measure_trivial_step),
    ];
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> =
        tests.iter().filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str()))).collect();
    // Not root: the tests run rootless, in a user namespace as bake makes
    // it (entered here, before any thread); one that cannot be made fails
    // the run, never a silent pass.
    match sandbox::enter_user_namespace() {
        sandbox::Entered::Root => {}
        sandbox::Entered::Mapped { .. } => println!("\nrootless: in a user namespace mapped with subordinate ids"),
        other => {
            eprintln!("the sandbox tests need root or a user namespace with subordinate ids: {other:?}");
            return ExitCode::FAILURE;
        }
    }
    println!("\nrunning {} sandbox tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in &selected {
        let started = Instant::now();
        let ok = std::panic::catch_unwind(test).is_ok();
        println!("test {name} ... {} ({:.0?})", if ok { "ok" } else { "FAILED" }, started.elapsed());
        if !ok {
            failed.push(*name);
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

// ---------------------------------------------------------------------------
// Fixtures

/// A temporary folder with a busybox image in two layers.
struct Image {
    dir: tempfile::TempDir,
    lowers: Vec<PathBuf>,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn image() -> Image {
    let dir = tempfile::Builder::new().prefix("bake-sandbox-test-").tempdir().unwrap();
    let base = dir.path().join("snapshots/base");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    write(
        &base.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nbuilder:x:1500:1600::/home/builder:/bin/sh\n",
    );
    write(&base.join("etc/group"), "root:x:0:\napp:x:1000:\nbgroup:x:1600:\nextra:x:3000:builder\n");
    write(&base.join("data/keep"), "keep\n");
    write(&base.join("data/modify"), "before\n");
    write(&base.join("data/delete"), "delete me\n");
    write(&base.join("dir/old/a"), "a\n");
    write(&base.join("dir/old/sub/b"), "b\n");
    // A second layer on top: changes one file, so two lowers are merged.
    let top = dir.path().join("snapshots/top");
    write(&top.join("data/keep"), "kept\n");
    Image { lowers: vec![base, top], dir }
}

/// A fresh upper and work folder for one step.
fn step_dirs(image: &Image) -> (PathBuf, PathBuf) {
    let step = tempfile::Builder::new().prefix("step-").tempdir_in(image.dir.path()).unwrap().keep();
    let (upper, work) = (step.join("upper"), step.join("work"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    (upper, work)
}

fn spec(image: &Image, script: &str) -> RunSpec {
    let (upper, work) = step_dirs(image);
    RunSpec {
        lowers: image.lowers.clone(),
        upper,
        work,
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/bin".into())],
        cwd: "/".into(),
        user: None,
        hostname: "bakebox".into(),
        network: Network::Host,
        insecure: false,
        mounts: Vec::new(),
    }
}

struct Ran {
    code: Result<i32, SandboxError>,
    out: String,
    err: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn run_with(spec: &RunSpec, backend: &Backend) -> Ran {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = runtime().block_on(async {
        let mut collect = |stream: OutputStream, bytes: &[u8]| match stream {
            OutputStream::Stdout => out.extend_from_slice(bytes),
            OutputStream::Stderr => err.extend_from_slice(bytes),
        };
        sandbox::run_with(spec, backend, &mut collect, &CancellationToken::new()).await
    });
    Ran { code, out: String::from_utf8_lossy(&out).into_owned(), err: String::from_utf8_lossy(&err).into_owned() }
}

fn run(spec: &RunSpec) -> Ran {
    run_with(spec, &Backend::Overlay)
}

/// Runs and expects exit code 0; returns stdout.
fn ok(spec: &RunSpec) -> String {
    let ran = run(spec);
    assert_eq!(ran.code.as_ref().ok(), Some(&0), "{:?}\nstdout: {}\nstderr: {}", ran.code, ran.out, ran.err);
    ran.out
}

/// The upper folder as text: one line per entry, sorted.
fn listing(upper: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let owner = format!("{:o} {}:{}", meta.mode() & 0o7777, meta.uid(), meta.gid());
            let line = if meta.file_type().is_char_device() && meta.rdev() == 0 {
                "whiteout".to_owned()
            } else if meta.is_dir() {
                let opaque = xattr::get(&path, sandbox::opaque_xattr()).unwrap().is_some_and(|v| v == b"y");
                walk(root, &path, out);
                format!("dir {owner}{}", if opaque { " opaque" } else { "" })
            } else if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else {
                format!("file {owner} {:?}", std::fs::read_to_string(&path).unwrap())
            };
            out.insert(rel, line);
        }
    }
    let mut out = BTreeMap::new();
    walk(upper, upper, &mut out);
    out.into_iter().map(|(k, v)| format!("{k}: {v}")).collect()
}

/// Host processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// A `sleep` argument no other test process uses.
fn marker(n: u32) -> String {
    format!("{}{n}", 1_000_000 + std::process::id())
}

/// `/proc/PID/stat` after the command name (which may contain spaces):
/// state, ppid, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn state_of(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lines of the host's mount table that mention `dir`.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy();
    table.lines().filter(|l| l.contains(dir.as_ref())).map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------
// Tests

fn output_and_exit_code() {
    let image = image();
    let ran = run(&spec(&image, "echo hi; echo err >&2; exit 3"));
    assert_eq!(ran.code.unwrap(), 3);
    assert_eq!(ran.out, "hi\n");
    assert_eq!(ran.err, "err\n");
    // Killed by a signal: 128 + the signal.
    let ran = run(&spec(&image, "kill -9 $$"));
    assert_eq!(ran.code.unwrap(), 137);
    // `run` probes the backend itself.
    let s = spec(&image, "echo probed");
    let mut out = Vec::new();
    let code = runtime().block_on(sandbox::run(&s, &mut |_, b| out.extend_from_slice(b), &CancellationToken::new()));
    assert_eq!((code.unwrap(), out.as_slice()), (0, &b"probed\n"[..]));
}

fn pid1_hostname_proc_dev() {
    let image = image();
    let script = "echo ppid=$PPID; echo pid=$$; echo host=$(hostname); ps -o pid,comm | wc -l; \
                  echo x > /dev/null && echo null-ok; test -c /dev/tty && test -c /dev/full && echo devs-ok; \
                  head -c 8 /dev/urandom | wc -c; head -c 4 /dev/zero | od -An -tx1; \
                  test -d /dev/pts && test -L /dev/ptmx && test -c /dev/pts/ptmx && echo pts-ok; \
                  echo s > /dev/shm/s && echo shm-ok; ls /proc/self/ns/mnt > /dev/null && test -d /proc/1 && echo proc-ok; \
                  grep -v ' /proc/\\| /sys/' /proc/mounts | grep -c .; mount -t tmpfs t /mnt 2>/dev/null || echo no-mount; \
                  grep CapEff /proc/self/status";
    let out = ok(&spec(&image, script));
    let lines: Vec<&str> = out.lines().collect();
    // The shell's parent is PID 1 (the sandbox's init), the shell is PID 2.
    assert_eq!(lines[0], "ppid=1", "{out}");
    assert_eq!(lines[1], "pid=2", "{out}");
    assert_eq!(lines[2], "host=bakebox");
    // A header plus init, sh and ps.
    let processes: usize = lines[3].trim().parse().unwrap();
    assert!(processes <= 5, "ps shows {processes} lines:\n{out}");
    assert_eq!(lines[4..7], ["null-ok", "devs-ok", "8"]);
    assert_eq!(lines[7].trim(), "00 00 00 00");
    assert_eq!(lines[8..11], ["pts-ok", "shm-ok", "proc-ok"]);
    // Only the container's own mounts are visible: root, /dev (tmpfs, six
    // devices, pts, shm), /proc, /sys, hosts, resolv.conf (and, below /proc
    // and /sys, the masked and read-only paths).
    assert_eq!(lines[11], "14", "{out}");
    // Docker's default capabilities: no CAP_SYS_ADMIN, so no mounting.
    assert_eq!(lines[12], "no-mount");
    assert_eq!(lines[13], "CapEff:\t00000000a80425fb", "{out}");
}

/// More layers than absolute paths fit in one mount's options.
fn many_layers() {
    let mut image = image();
    for i in 0..130 {
        let layer = image.dir.path().join(format!("snapshots/{i:064}"));
        write(&layer.join(format!("layers/{i}")), &format!("{i}\n"));
        image.lowers.push(layer);
    }
    let out = ok(&spec(&image, "ls /layers | wc -l; cat /layers/0 /layers/129 /data/keep"));
    assert_eq!(out, "130\n0\n129\nkept\n");
}

fn users_from_the_image() {
    let image = image();
    let mut s = spec(&image, "id -u; id -g; id -G; echo $HOME");
    s.user = Some("1000:1000".into());
    assert_eq!(ok(&s), "1000\n1000\n1000\n/home/app\n");
    let mut s = spec(&image, "id -u; id -g; id -G; echo $HOME");
    s.user = Some("builder".into());
    assert_eq!(ok(&s), "1500\n1600\n1600 3000\n/home/builder\n");
    let mut s = spec(&image, "id -u; id -g; echo $HOME");
    s.user = Some("builder:app".into());
    assert_eq!(ok(&s), "1500\n1000\n/home/builder\n");
    let s = spec(&image, "id -u; id -G; echo $HOME");
    assert_eq!(ok(&s), "0\n0\n/root\n");
}

fn missing_cwd_is_created() {
    let image = image();
    let mut s = spec(&image, "pwd; touch here");
    s.cwd = "/work/dir".into();
    assert_eq!(ok(&s), "/work/dir\n");
    assert_eq!(listing(&s.upper), ["work: dir 755 0:0", "work/dir: dir 755 0:0", "work/dir/here: file 644 0:0 \"\""]);
}

/// Create, modify a lower file, delete one, replace a folder, with a cache
/// and a secret mounted where the image has nothing, touching /proc, /dev,
/// /etc/hosts and /etc/resolv.conf on the way.
const CHANGES: &str = "echo new > /new; echo after >> /data/modify; rm /data/delete; \
                       rm -rf /dir/old; mkdir /dir/old; echo n > /dir/old/n; \
                       cat /etc/hosts /etc/resolv.conf /run/secrets/x > /dev/null; ls /proc/self /dev /root/.cache > /dev/null";

const EXPECTED_UPPER: &[&str] = &[
    "data: dir 755 0:0",
    "data/delete: whiteout",
    "data/modify: file 644 0:0 \"before\\nafter\\n\"",
    "dir: dir 755 0:0",
    "dir/old: dir 755 0:0 opaque",
    "dir/old/n: file 644 0:0 \"n\\n\"",
    "new: file 644 0:0 \"new\\n\"",
];

fn changes_spec(image: &Image) -> RunSpec {
    let mut s = spec(image, CHANGES);
    let cache = image.dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let secret = image.dir.path().join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    s.mounts = vec![
        Mount { source: cache, target: "/root/.cache".into(), readonly: false },
        Mount { source: secret, target: "/run/secrets/x".into(), readonly: true },
    ];
    s
}

fn writes_land_in_upper_overlay() {
    let image = image();
    let s = changes_spec(&image);
    ok(&s);
    assert_eq!(listing(&s.upper), EXPECTED_UPPER);
    // The upper's root became the image's `/`.
    let root = std::fs::metadata(&s.upper).unwrap();
    let image_root = std::fs::metadata(&image.lowers[1]).unwrap();
    assert_eq!(root.mode(), image_root.mode());
    // Nothing left beside the upper but the work folder.
    let beside: Vec<String> = std::fs::read_dir(s.upper.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside.len(), 2, "{beside:?}");
}

fn copy_backend_writes_the_same_upper() {
    let image = image();
    let s = changes_spec(&image);
    let ran = run_with(&s, &Backend::Copy { reason: "test".into() });
    assert_eq!(ran.code.as_ref().ok(), Some(&0), "{:?} {}", ran.code, ran.err);
    assert_eq!(listing(&s.upper), EXPECTED_UPPER);
    // The same step with overlay: identical uppers, but for times.
    let o = changes_spec(&image);
    ok(&o);
    assert_eq!(listing(&s.upper), listing(&o.upper));
    // Modes, owners, links, replacing a file by a folder and back.
    let script = "chmod 700 /data; chown 1000:1000 /data/keep; ln -s /data/keep /link; \
                  rm /data/modify; mkdir /data/modify; rm -rf /dir/old/sub; echo f > /dir/old/sub";
    let c = spec(&image, script);
    assert_eq!(run_with(&c, &Backend::Copy { reason: "test".into() }).code.unwrap(), 0);
    let o = spec(&image, script);
    ok(&o);
    assert_eq!(listing(&c.upper), listing(&o.upper));
    assert!(
        listing(&c.upper).contains(&"data/keep: file 644 1000:1000 \"kept\\n\"".to_owned()),
        "{:?}",
        listing(&c.upper)
    );
    // A step that changes nothing leaves an empty upper.
    let n = spec(&image, "cat /data/keep > /dev/null");
    assert_eq!(run_with(&n, &Backend::Copy { reason: "test".into() }).code.unwrap(), 0);
    assert!(listing(&n.upper).is_empty(), "{:?}", listing(&n.upper));
}

fn network_none_has_only_loopback_up() {
    let image = image();
    let mut s = spec(&image, "grep : /proc/net/dev | cut -d: -f1; ip link show lo");
    s.network = Network::None;
    let out = ok(&s);
    let interfaces: Vec<&str> = out.lines().take_while(|l| !l.contains('<')).map(str::trim).collect();
    assert_eq!(interfaces, ["lo"], "{out}");
    assert!(out.contains("<LOOPBACK,UP,LOWER_UP>"), "{out}");
    // The host's network has more than loopback.
    let host = ok(&spec(&image, "grep -c : /proc/net/dev"));
    assert!(host.trim().parse::<usize>().unwrap() > 1, "{host}");
}

fn cache_persists_and_secret_is_read_only() {
    let image = image();
    let first = changes_spec(&image);
    let mut s =
        spec(&image, "echo one > /root/.cache/f; cat /run/secrets/x; echo; echo no > /run/secrets/x || echo ro");
    s.mounts.clone_from(&first.mounts);
    assert_eq!(ok(&s), "s3cret\nro\n");
    assert!(listing(&s.upper).is_empty(), "{:?}", listing(&s.upper));
    let mut again = spec(&image, "cat /root/.cache/f");
    again.mounts.clone_from(&first.mounts);
    assert_eq!(ok(&again), "one\n");
    assert_eq!(std::fs::read_to_string(image.dir.path().join("cache/f")).unwrap(), "one\n");
    assert_eq!(std::fs::read_to_string(image.dir.path().join("secret")).unwrap(), "s3cret");
}

fn setup_errors_are_typed() {
    let image = image();
    let mut s = spec(&image, "true");
    s.user = Some("nobody".into());
    assert!(matches!(run(&s).code, Err(SandboxError::User { .. })));
    let mut s = spec(&image, "true");
    s.args = vec!["no-such-program".into()];
    assert!(matches!(run(&s).code, Err(SandboxError::NotFound { program }) if program == "no-such-program"));
    let mut s = spec(&image, "true");
    s.mounts = vec![Mount { source: image.dir.path().to_path_buf(), target: "/data/keep".into(), readonly: false }];
    assert!(matches!(run(&s).code, Err(SandboxError::Target { .. })));
    // A program without a slash is searched in the image's PATH.
    let mut s = spec(&image, "true");
    s.args = vec!["echo".into(), "found".into()];
    assert_eq!(ok(&s), "found\n");
}

fn cancel_kills_the_tree_and_leaves_no_mount() {
    let image = image();
    for (marker, backend) in [(marker(1), Backend::Overlay), (marker(2), Backend::Copy { reason: "test".into() })] {
        let s = spec(&image, &format!("sleep {marker} & sleep {marker}"));
        let cancel = CancellationToken::new();
        let rt = runtime();
        let task = {
            let (s, cancel) = (s.clone(), cancel.clone());
            rt.spawn(async move { sandbox::run_with(&s, &backend, &mut |_, _| {}, &cancel).await })
        };
        poll("both sleeps to start", || processes_with(&format!("sleep {marker}")).len() == 2);
        let cancelled = Instant::now();
        cancel.cancel();
        let result = rt.block_on(task).unwrap();
        assert!(matches!(result, Err(SandboxError::Cancelled)), "{result:?}");
        assert!(cancelled.elapsed() < Duration::from_secs(5), "cancelling took {:?}", cancelled.elapsed());
        assert_eq!(processes_with(&format!("sleep {marker}")), Vec::<i32>::new());
        assert_eq!(host_mounts_under(image.dir.path()), Vec::<String>::new());
        // The scratch folder (the copied root filesystem too) is gone, and
        // the upper is empty.
        assert_eq!(std::fs::read_dir(s.upper.parent().unwrap()).unwrap().count(), 2);
        assert!(listing(&s.upper).is_empty());
    }
}

const PARENT_ARG: &str = "__killable-parent";

/// Runs `sleep MARKER` in a sandbox over `lowers`, then waits to be killed.
fn killable_parent(args: &[String]) {
    let (marker, upper) = (&args[0], PathBuf::from(&args[1]));
    // A private network: slirp4netns must die with the rest.
    let spec = RunSpec {
        lowers: args[2..].iter().map(PathBuf::from).collect(),
        work: upper.with_file_name("work"),
        upper,
        args: vec!["/bin/sh".into(), "-c".into(), format!("sleep {marker} & sleep {marker}")],
        env: vec![("PATH".into(), "/bin".into())],
        cwd: "/".into(),
        user: None,
        hostname: "parent".into(),
        network: Network::Private,
        insecure: false,
        mounts: Vec::new(),
    };
    let _ = runtime().block_on(sandbox::run_with(&spec, &Backend::Overlay, &mut |_, _| {}, &CancellationToken::new()));
}

fn killed_parent_takes_the_tree_down() {
    let image = image();
    let marker = marker(3);
    let (upper, _work) = step_dirs(&image);
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .arg(PARENT_ARG)
        .arg(&marker)
        .arg(&upper)
        .args(&image.lowers)
        .spawn()
        .unwrap();
    poll("both sleeps to start", || processes_with(&format!("sleep {marker}")).len() == 2);
    let parent_pid = i32::try_from(parent.id()).unwrap();
    let helpers: Vec<i32> =
        processes_with(sandbox::HELPER_ARG).into_iter().filter(|&p| parent_of(p) == Some(parent_pid)).collect();
    assert_eq!(helpers.len(), 1);
    let nat = nat_of(&helpers);
    assert_eq!(nat.len(), 1, "one slirp4netns for the step");
    parent.kill().unwrap();
    parent.wait().unwrap();
    poll("the sleeps to die with their parent", || processes_with(&format!("sleep {marker}")).is_empty());
    // Dead: gone, or a zombie waiting for the host's init to reap it.
    poll("the helper to die", || helpers.iter().all(|&p| state_of(p).is_none_or(|s| s == 'Z')));
    poll("slirp4netns to die", || nat.iter().all(|&p| state_of(p).is_none_or(|s| s == 'Z')));
    assert_eq!(host_mounts_under(image.dir.path()), Vec::<String>::new());
}

/// The slirp4netns processes the given helpers started.
fn nat_of(helpers: &[i32]) -> Vec<i32> {
    processes_with(sandbox::NAT_PROGRAM)
        .into_iter()
        .filter(|&p| parent_of(p).is_some_and(|parent| helpers.contains(&parent)))
        .collect()
}

fn probe_finds_overlay() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(sandbox::probe_in(dir.path()), Backend::Overlay);
    println!("    probe(): {}", sandbox::probe());
}

/// Prints (asserts nothing) what a trivial step costs on each network.
fn measure_trivial_step() {
    let image = image();
    let rt = runtime();
    for network in [Network::Host, Network::None, Network::Private] {
        let mut times = Vec::new();
        for _ in 0..50 {
            let mut s = spec(&image, "");
            s.args = vec!["/bin/true".into()];
            s.network = network;
            let start = Instant::now();
            let code = rt.block_on(sandbox::run_with(&s, &Backend::Overlay, &mut |_, _| {}, &CancellationToken::new()));
            times.push(start.elapsed());
            assert_eq!(code.unwrap(), 0);
        }
        times.sort();
        println!(
            "    /bin/true end to end, network {network:?}, 50 runs: median {:.2} ms (min {:.2}, max {:.2})",
            times[25].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[49].as_secs_f64() * 1e3
        );
    }
}

// ---------------------------------------------------------------------------
// Confinement: each test is an attack that worked before the hardening.

fn read_host(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Writing the host's sysctls fails, and they keep their values.
fn proc_sys_is_read_only() {
    let image = image();
    let lease = read_host("/proc/sys/fs/lease-break-time");
    let core = read_host("/proc/sys/kernel/core_pattern");
    let bumped = lease.trim().parse::<u32>().unwrap() + 1;
    // core_pattern gets its own value back: a write that went through would
    // show, and harm nothing.
    let script = format!(
        "echo {bumped} > /proc/sys/fs/lease-break-time && echo WROTE-LEASE; \
         printf '%s' '{}' > /proc/sys/kernel/core_pattern && echo WROTE-CORE; true",
        core.trim_end()
    );
    for network in [Network::Host, Network::Private] {
        let mut s = spec(&image, &script);
        s.network = network;
        let ran = run(&s);
        let after = read_host("/proc/sys/fs/lease-break-time");
        if after != lease {
            std::fs::write("/proc/sys/fs/lease-break-time", &lease).unwrap();
        }
        assert_eq!(ran.code.as_ref().ok(), Some(&0), "{:?} {}", ran.code, ran.err);
        assert!(!ran.out.contains("WROTE"), "{network:?}: a sysctl write went through: {}", ran.out);
        assert!(ran.err.contains("Read-only file system"), "{}", ran.err);
        assert_eq!(after, lease);
        assert_eq!(read_host("/proc/sys/kernel/core_pattern"), core);
    }
}

/// A loop device attached to a file with known bytes, detached when dropped.
struct Loop {
    device: String,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    fn attach(contents: &[u8]) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        let out = std::process::Command::new("losetup").args(["--find", "--show"]).arg(file.path()).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        Self { device: String::from_utf8(out.stdout).unwrap().trim().to_owned(), _file: file }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// A block device made with mknod (CAP_MKNOD stays, as in Docker) opens
/// nothing: not in the root filesystem, not in /dev, not in a cache.
/// Rootless, it cannot even be made (CAP_MKNOD of a user namespace makes no
/// device): the host's disk is tried.
fn block_devices_do_not_open() {
    if sandbox::rootless() {
        return block_devices_cannot_be_made_rootless();
    }
    let image = image();
    let marker = format!("BAKE-LOOP-MARKER-{}", std::process::id());
    let mut contents = marker.clone().into_bytes();
    contents.resize(1 << 20, 0);
    let attached = Loop::attach(&contents);
    let rdev = std::fs::metadata(&attached.device).unwrap().rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let mut script = String::new();
    for dir in ["/", "/dev/", "/dev/shm/", "/cache/"] {
        let _ = write!(
            script,
            "mknod {dir}blk b {major} {minor} && echo made; \
             head -c 64 {dir}blk && echo READ-OK; \
             echo OVERWRITTEN | dd of={dir}blk conv=notrunc && echo WRITE-OK; "
        );
    }
    script += "true";
    let mut s = spec(&image, &script);
    let cache = image.dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    s.mounts = vec![Mount { source: cache, target: "/cache".into(), readonly: false }];
    let ran = run(&s);
    assert_eq!(ran.code.as_ref().ok(), Some(&0), "{:?} {}", ran.code, ran.err);
    assert_eq!(ran.out.matches("made").count(), 4, "{}\n{}", ran.out, ran.err);
    assert!(!ran.out.contains(&marker), "the device was read: {}", ran.out);
    assert!(!ran.out.contains("READ-OK") && !ran.out.contains("WRITE-OK"), "{}", ran.out);
    assert!(ran.err.contains("Permission denied"), "{}", ran.err);
    let mut head = vec![0u8; marker.len()];
    std::io::Read::read_exact(&mut std::fs::File::open(&attached.device).unwrap(), &mut head).unwrap();
    assert_eq!(String::from_utf8_lossy(&head), marker, "the device was written");
    // The bound devices still work.
    assert_eq!(ok(&spec(&image, "head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null")), "3\nnull\n");
}

fn block_devices_cannot_be_made_rootless() {
    let image = image();
    let disk = std::fs::read_dir("/sys/dev/block").unwrap().next().unwrap().unwrap().file_name();
    let (major, minor) = disk.to_str().unwrap().split_once(':').unwrap();
    let mut script = String::new();
    for dir in ["/", "/dev/", "/dev/shm/", "/cache/"] {
        let _ = write!(script, "mknod {dir}blk b {major} {minor} && echo made; head -c 64 {dir}blk && echo READ-OK; ");
    }
    script += "true";
    let mut s = spec(&image, &script);
    let cache = image.dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    s.mounts = vec![Mount { source: cache, target: "/cache".into(), readonly: false }];
    let ran = run(&s);
    assert_eq!(ran.code.as_ref().ok(), Some(&0), "{:?} {}", ran.code, ran.err);
    assert!(!ran.out.contains("made") && !ran.out.contains("READ-OK"), "{}\n{}", ran.out, ran.err);
    assert_eq!(ran.err.matches("Operation not permitted").count(), 4, "{}", ran.err);
    assert_eq!(ok(&spec(&image, "head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null")), "3\nnull\n");
}

/// Docker's masked paths (moby daemon/pkg/oci/defaults.go) and read-only
/// paths, as the host has them.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];
const READONLY: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn masked_and_read_only_paths() {
    let image = image();
    let mut script = String::new();
    let mut expected = Vec::new();
    for path in MASKED.iter().filter(|p| Path::new(p).exists()) {
        if Path::new(path).is_dir() {
            let _ = write!(script, "echo {path} $(ls -A {path} | wc -l); ");
        } else {
            let _ = write!(script, "echo {path} $(head -c 64 {path} | wc -c); ");
        }
        expected.push(format!("{path} 0"));
    }
    for path in READONLY.iter().filter(|p| Path::new(p).exists()) {
        let _ = write!(script, "grep -q ' {path} [^ ]* ro,' /proc/mounts && echo {path} ro; ");
        expected.push(format!("{path} ro"));
    }
    script += "grep -q ' /sys sysfs ro,' /proc/mounts && echo /sys ro; \
               echo h > /proc/sysrq-trigger && echo WROTE-SYSRQ; true";
    expected.push("/sys ro".into());
    // A file Docker masks and that every kernel has: the test proves something.
    assert!(expected.iter().any(|e| e == "/proc/timer_list 0" || e == "/proc/interrupts 0"), "{expected:?}");
    let mut s = spec(&image, &script);
    s.network = Network::Private;
    let out = ok(&s);
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{out}");
}

fn status_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("Cap") || l.starts_with("Seccomp:") || l.starts_with("NoNewPrivs:")).collect()
}

/// Docker's default capability set, in /proc/self/status form.
const DOCKER_CAPS: &str = "00000000a80425fb";

fn seccomp_no_new_privs_and_docker_capabilities() {
    let image = image();
    let script = "grep -E '^(Cap|Seccomp:|NoNewPrivs:)' /proc/self/status";
    let out = ok(&spec(&image, script));
    assert_eq!(
        status_lines(&out),
        [
            "CapInh:\t0000000000000000".to_owned(),
            format!("CapPrm:\t{DOCKER_CAPS}"),
            format!("CapEff:\t{DOCKER_CAPS}"),
            format!("CapBnd:\t{DOCKER_CAPS}"),
            "CapAmb:\t0000000000000000".to_owned(),
            "NoNewPrivs:\t1".to_owned(),
            "Seccomp:\t2".to_owned(),
        ],
        "{out}"
    );
    // A user other than root holds none, and cannot gain any.
    let mut s = spec(&image, script);
    s.user = Some("1000".into());
    let out = ok(&s);
    let lines = status_lines(&out);
    assert!(lines.contains(&"CapEff:\t0000000000000000") && lines.contains(&"CapPrm:\t0000000000000000"), "{out}");
    assert!(lines.contains(&format!("CapBnd:\t{DOCKER_CAPS}").as_str()) && lines.contains(&"Seccomp:\t2"), "{out}");
}

/// Docker's profile refuses unshare and clone with namespace flags without
/// CAP_SYS_ADMIN: no user namespace, in which the step would be root again.
fn no_nested_user_namespaces() {
    let image = image();
    let ran = run(&spec(&image, "unshare -U true && echo NESTED; unshare -Ur id -u && echo NESTED-ROOT; true"));
    assert_eq!(ran.code.as_ref().ok(), Some(&0), "{:?}", ran.code);
    assert!(!ran.out.contains("NESTED"), "{}", ran.out);
    assert!(ran.err.contains("Operation not permitted"), "{}", ran.err);
}

fn insecure_lifts_the_confinement() {
    let image = image();
    // Every capability this process holds (root here may lack some).
    let status = read_host("/proc/self/status");
    let all = status.lines().find_map(|l| l.strip_prefix("CapEff:\t")).unwrap().to_owned();
    let mut s = spec(
        &image,
        "grep -E '^(CapEff|Seccomp):' /proc/self/status; unshare -U true && echo nested; \
         head -c 16 /proc/timer_list | wc -c; grep -c ' /proc/sys [^ ]* ro,' /proc/mounts; true",
    );
    s.insecure = true;
    s.network = Network::None;
    let out = ok(&s);
    // Rootless, every capability is the user namespace's: a file only the
    // host's root may read stays closed.
    let timer_list = if sandbox::rootless() { 0 } else { 16 };
    assert_eq!(out, format!("CapEff:\t{all}\nSeccomp:\t0\nnested\n{timer_list}\n0\n"));
}

// ---------------------------------------------------------------------------
// The private network.

/// A TCP server on `addr` that greets every client with `hello`.
fn greeter(addr: &str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let bound = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            use std::io::Write;
            let _ = stream.and_then(|mut s| s.write_all(b"hello\n"));
        }
    });
    bound
}

/// This machine's address on its default route (not loopback).
fn host_address() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // No packet is sent: connecting a UDP socket only picks a route.
    probe.connect("198.51.100.1:9").expect("this test needs a default route");
    probe.local_addr().unwrap().ip()
}

fn private_network_reaches_out_not_the_host_loopback() {
    let image = image();
    let outside = greeter(&format!("{}:0", host_address()));
    let loopback = greeter("127.0.0.1:0");
    let port = loopback.port();
    let script = format!(
        "nc -w 5 {} {} </dev/null; echo out=$?; \
         nc -w 5 10.0.2.2 {port} </dev/null; echo gateway=$?; \
         nc -w 5 127.0.0.1 {port} </dev/null; echo loopback=$?; \
         cat /etc/resolv.conf; grep : /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' '",
        outside.ip(),
        outside.port()
    );
    let mut s = spec(&image, &script);
    s.network = Network::Private;
    let out = ok(&s);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["hello", "out=0"], "{out}");
    assert!(lines[2].starts_with("gateway=") && lines[2] != "gateway=0", "{out}");
    assert!(lines[3].starts_with("loopback=") && lines[3] != "loopback=0", "{out}");
    assert_eq!(lines[4], "nameserver 10.0.2.3", "{out}");
    let mut interfaces: Vec<&str> = lines[5].split_whitespace().collect();
    interfaces.sort_unstable();
    assert_eq!(interfaces, ["lo", "tap0"], "{out}");
    assert_eq!(out.matches("hello").count(), 1, "{out}");
    // `network "host"` is the explicit way to the host's loopback.
    let mut s = spec(&image, &format!("nc -w 5 127.0.0.1 {port} </dev/null"));
    s.network = Network::Host;
    assert_eq!(ok(&s), "hello\n");
}

/// The Debian fixture's root filesystem (it has perl, to open a packet socket).
fn debian_rootfs() -> PathBuf {
    // BAKE_TEST_ROOT: the checkout's copy of scripts/test-rootless.sh.
    let root = std::env::var_os("BAKE_TEST_ROOT")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), PathBuf::from);
    let script = root.join("scripts/fixtures.sh");
    let out = std::process::Command::new(script).args(["path", "debian"]).output().unwrap();
    assert!(out.status.success(), "the Debian fixture is missing: run scripts/fixtures.sh");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("rootfs")
}

/// A step holding CAP_NET_RAW opens a packet socket and listens while the
/// host talks to itself on loopback: it hears nothing in its own namespace
/// (and everything with `network "host"`, which proves the listener works;
/// rootless, none opens there).
fn packet_socket_sees_no_host_traffic() {
    let rootfs = debian_rootfs();
    let image = image();
    let secret = format!("HOST-SECRET-{}", std::process::id());
    let server = greeter("127.0.0.1:0");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talker = {
        let (stop, secret) = (stop.clone(), secret.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut s) = std::net::TcpStream::connect(server) {
                    use std::io::Write;
                    let _ = s.write_all(secret.as_bytes());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Listens for two seconds (a capture window, not a time assertion).
    let perl = format!(
        "use Socket; socket(my $s, 17, 3, 768) or do {{ print \"cannot-open\\n\"; exit 0 }}; print \"opened\\n\"; \
         my $seen = 0; my $end = time + 2; \
         while (time < $end) {{ my $rin = ''; vec($rin, fileno($s), 1) = 1; \
           if (select(my $r = $rin, undef, undef, 0.2)) {{ my $buf; recv($s, $buf, 65535, 0); \
             $seen = 1 if index($buf, '{secret}') >= 0; }} }} \
         print $seen ? \"seen\\n\" : \"unseen\\n\";"
    );
    let mut results = Vec::new();
    for network in [Network::Private, Network::Host] {
        let mut s = spec(&image, "");
        s.lowers = vec![rootfs.clone()];
        s.args = vec!["/usr/bin/perl".into(), "-e".into(), perl.clone()];
        s.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
        s.network = network;
        results.push(ok(&s));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    talker.join().unwrap();
    // Rootless, the host's network is not the user namespace's: no packet
    // socket opens there at all.
    let host = if sandbox::rootless() { "cannot-open\n" } else { "opened\nseen\n" };
    assert_eq!(results, ["opened\nunseen\n", host]);
}

/// slirp4netns ends with the step: when it exits and when it is cancelled
/// (bake killed: `killed_parent_takes_the_tree_down`).
fn nat_ends_with_the_step() {
    let image = image();
    let me = i32::try_from(std::process::id()).unwrap();
    let rt = runtime();
    for cancel_it in [false, true] {
        let marker = marker(if cancel_it { 5 } else { 4 });
        let mut s = spec(&image, &format!("sleep {marker} & sleep {marker}"));
        s.network = Network::Private;
        let cancel = CancellationToken::new();
        let task = {
            let (s, cancel) = (s.clone(), cancel.clone());
            rt.spawn(async move { sandbox::run_with(&s, &Backend::Overlay, &mut |_, _| {}, &cancel).await })
        };
        poll("both sleeps to start", || processes_with(&format!("sleep {marker}")).len() == 2);
        let helpers: Vec<i32> =
            processes_with(sandbox::HELPER_ARG).into_iter().filter(|&p| parent_of(p) == Some(me)).collect();
        let nat = nat_of(&helpers);
        assert_eq!(nat.len(), 1, "{helpers:?}");
        if cancel_it {
            cancel.cancel();
        } else {
            for pid in processes_with(&format!("sleep {marker}")) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let result = rt.block_on(task).unwrap();
        assert_eq!(result.is_err(), cancel_it, "{result:?}");
        // Killed by the helper before it reported: gone, or a zombie for
        // init to reap once the kernel has torn its tap device down.
        poll("slirp4netns to die", || nat.iter().all(|&p| state_of(p).is_none_or(|s| s == 'Z')));
    }
}

/// Without slirp4netns, a private network is an error naming it, never the
/// host's network instead.
#[allow(unsafe_code)]
fn missing_nat_is_a_clear_error() {
    let image = image();
    let mut s = spec(&image, "echo RAN");
    s.network = Network::Private;
    let path = std::env::var_os("PATH").unwrap_or_default();
    // SAFETY: this harness runs one test at a time on the main thread, and
    // no runtime (no other thread) is alive between two runs.
    unsafe { std::env::set_var("PATH", "/nonexistent") };
    let ran = run(&s);
    // SAFETY: as above.
    unsafe { std::env::set_var("PATH", &path) };
    assert!(matches!(ran.code, Err(SandboxError::NatMissing)), "{:?}", ran.code);
    assert!(!ran.out.contains("RAN"));
    let text = format!("{:?}", miette::Report::new(SandboxError::NatMissing));
    assert!(text.contains("apt-get install slirp4netns"), "{text}");
}
