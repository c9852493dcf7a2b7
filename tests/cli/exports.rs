//! What leaves a stage for the host (`artifact`, `-o type=local`): setuid and
//! setgid bits cleared unless asked, special files never written, files
//! owned by whoever runs bake.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::harness::bake;
use crate::run::{home_with_busybox, project};

/// A stage with a setuid-root file owned by 1234, a setgid file, a FIFO and
/// a character device, and artifacts of them.
const BUILD: &str = r#"
stage "s" from="busybox" {
    run "mkdir /out && cd /out && echo su > su && chown 1234:1234 su && chmod 4755 su && echo sg > sg && chmod 2755 sg && mkfifo fifo && mknod null c 1 3"
}
artifact "all" from="s" path="/out" dest="dist"
artifact "kept" from="s" path="/out/su" dest="kept/su" keep-setuid=#true
"#;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

#[test]
fn artifacts_lose_setuid_bits_special_files_and_image_owners_unless_asked() {
    let home = home_with_busybox();
    let p = project(BUILD);
    let built = bake(p.path(), home.path(), &["build", "all", "kept"]);
    assert_eq!(built.code, 0, "{}", built.render());
    let dist = p.path().join("dist");
    assert_eq!(mode(&dist.join("su")), 0o755, "setuid cleared");
    assert_eq!(mode(&dist.join("sg")), 0o755, "setgid cleared");
    let me = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    let su = std::fs::metadata(dist.join("su")).expect("stat");
    assert_eq!((su.uid(), su.gid()), me, "owned by whoever runs bake, not the image's 1234");
    for special in ["fifo", "null"] {
        assert!(std::fs::symlink_metadata(dist.join(special)).is_err(), "{special} is not written on the host");
    }
    assert!(
        built.stderr.contains(
            "artifact `all`: skipped 2 special files that bake never writes on the host (device nodes, FIFOs, \
             sockets): /out/fifo, /out/null"
        ),
        "{}",
        built.stderr
    );
    // Asked for: kept.
    assert_eq!(mode(&p.path().join("kept/su")), 0o4755, "keep-setuid=#true keeps the bit");
}

#[test]
fn local_outputs_lose_setuid_bits_and_special_files_unless_asked() {
    let home = home_with_busybox();
    let p = project(BUILD);
    let built = bake(p.path(), home.path(), &["build", "all", "-o", "type=local,dest=plain"]);
    assert_eq!(built.code, 0, "{}", built.render());
    let out = p.path().join("plain");
    assert_eq!(mode(&out.join("su")), 0o755, "setuid cleared");
    assert_eq!(mode(&out.join("sg")), 0o755, "setgid cleared");
    assert!(std::fs::symlink_metadata(out.join("fifo")).is_err(), "no FIFO on the host");
    assert!(std::fs::symlink_metadata(out.join("null")).is_err(), "no device on the host");
    assert!(built.stderr.contains("`type=local` output of `all`: skipped 2 special files"), "{}", built.stderr);

    let kept = bake(p.path(), home.path(), &["build", "all", "-o", "type=local,dest=kept,keep-setuid=true"]);
    assert_eq!(kept.code, 0, "{}", kept.render());
    assert_eq!(mode(&p.path().join("kept/su")), 0o4755, "keep-setuid=true keeps setuid");
    assert_eq!(mode(&p.path().join("kept/sg")), 0o2755, "keep-setuid=true keeps setgid");

    let wrong = bake(p.path(), home.path(), &["build", "all", "-o", "type=oci,dest=x.tar,keep-setuid=true"]);
    assert_eq!(wrong.code, 2, "{}", wrong.render());
    assert!(wrong.stderr.contains("`keep-setuid=` applies to `type=local` only"), "{}", wrong.stderr);
}
