//! `run`: a command in the sandbox, on the stage's filesystem so far; what it
//! changes becomes one layer, and its upper folder becomes that layer's
//! snapshot, so the next step does not unpack what this one just wrote.
//!
//! The step's filesystem is an overlay of the parent's snapshots (or the
//! sandbox's copy fallback) with a fresh upper folder. After the command
//! exits 0, the upper folder *is* the diff, in overlay form: a removed path is
//! a character device 0:0 (written as `.wh.NAME`), a replaced folder carries
//! the opaque xattr (written as `.wh..wh..opq`). Owners, modes, links and
//! `security.capability` xattrs are kept as the command left them.
//!
//! `cache` folders live in `$BAKE_HOME/cache-mounts/`, one per cache id,
//! bind-mounted into the step and never part of a layer or a key. With
//! `sharing="locked"` a step holds the folder's lock file (flock) while it
//! runs, so steps using it, in any bake process, take turns; with
//! `sharing="private"` a step takes the first instance of the folder (`ID`,
//! `ID-1`, ...) whose lock is free, so steps running at once never share
//! one; `shared` (the default) is a plain folder. Secrets
//! (files or environment variables, read when the build started: see
//! `secrets.rs`) are written to 0600 files in the step's scratch folder,
//! bind-mounted read-only and removed when the step ends. None reaches a
//! layer, a key or the store, and what the step prints is masked before it
//! becomes an event or the failure's last lines.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::copy::{Content, Item, write_layer};
use super::secrets::{self, Lines};
use super::{Build, Event, ExecError, Secret};
use crate::context::EntryKind as CtxKind;
use crate::graph::ContextRead;
use crate::image::ImageConfig;
use crate::lang::{Run, Sharing, Span};
use crate::layer::{Entry, EntryKind, LayerInfo};
use crate::sandbox::{self, Mount, OutputStream, RunSpec, SandboxError};

/// The name prefix of a `run` step's scratch folder in `tmp/`.
pub(crate) const RUN_SCRATCH: &str = "run-";

/// The most lower folders one overlayfs mount takes (the kernel's
/// `OVL_MAX_STACK`); more fail the mount with EINVAL.
const OVERLAY_MAX_LOWERS: usize = 500;
/// The most layers a `run` step can sit on: the sandbox adds a lower of its
/// own (the mount points of `/dev`, `/proc`, ...) on top of the image's.
pub(crate) const MAX_RUN_LAYERS: usize = OVERLAY_MAX_LOWERS - 1;

/// Lines of output a failed step shows.
const TAIL: usize = 20;

pub(super) struct Step<'a, 'b> {
    pub(super) build: &'a Build<'b>,
    pub(super) node: &'a str,
    pub(super) span: Span,
    pub(super) config: &'a ImageConfig,
    pub(super) parent_layers: &'a [LayerInfo],
    /// Where each of the step's binds reads, bind for bind.
    pub(super) binds: Vec<BindSource>,
}

/// Where a bind reads: what a context bind selects, or the result of a
/// stage or image (with its name for messages).
pub(super) enum BindSource {
    Context(Option<ContextRead>),
    Fs(std::sync::Arc<super::FsResult>, String),
}

impl Step<'_, '_> {
    pub(super) fn run(&self, run: &Run) -> Result<LayerInfo, ExecError> {
        let engine = self.build.engine;
        self.check_layer_count()?;
        let lowers = engine.snapshots.unpacked_all(self.parent_layers)?;
        for message in engine.snapshots.take_notes() {
            self.build.events.event(Event::Warning { message });
        }
        // The upper must be on the snapshots' filesystem (overlayfs needs
        // upper and work on one filesystem; the copy fallback renames).
        let tmp = engine.home.tmp_dir();
        std::fs::create_dir_all(&tmp).map_err(|source| ExecError::Io { path: tmp.clone(), source })?;
        let scratch = tempfile::Builder::new()
            .prefix(&crate::scratch::prefix(RUN_SCRATCH))
            .tempdir_in(&tmp)
            .map_err(|source| ExecError::Io { path: tmp.clone(), source })?;
        let upper = scratch.path().join("upper");
        let work = scratch.path().join("work");
        for dir in [&upper, &work] {
            std::fs::create_dir(dir).map_err(|source| ExecError::Io { path: dir.clone(), source })?;
        }

        let mut env = self.config.env();
        for (k, v) in &run.env {
            let value = crate::image::expand(v, &env);
            match env.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = value,
                None => env.push((k.clone(), value)),
            }
        }
        let args = match &run.exec {
            Some(argv) => argv.clone(),
            None => {
                let mut args = self.config.shell();
                args.push(run.script.clone());
                args
            }
        };
        let (mounts, _cache_locks) = self.mounts(run, scratch.path())?;
        // `secret ID env=NAME`: the value as a variable of this step only.
        for secret in run.secrets.iter().filter(|s| s.env.is_some()) {
            let given = self.build.options.secrets.iter().find(|s: &&Secret| s.id == secret.id);
            let loaded = given.and_then(|g| self.build.secrets.iter().find(|l| l.id == g.id));
            if let (Some(name), Some(loaded)) = (&secret.env, loaded) {
                let value = String::from_utf8_lossy(&loaded.value).into_owned();
                env.retain(|(k, _)| k != name);
                env.push((name.clone(), value));
            }
        }
        let spec = RunSpec {
            lowers,
            upper: upper.clone(),
            work,
            args,
            env,
            cwd: self.config.workdir(),
            user: self.config.user(),
            hostname: "bake".to_owned(),
            network: run.network,
            // Allowed or not was checked before the build started.
            insecure: matches!(run.security, crate::lang::Security::Insecure { .. }),
            mounts,
        };

        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL);
        let mut lines = [Lines::default(), Lines::default()];
        let events = self.build.events;
        let masker = self.build.masker;
        let node = self.node.to_owned();
        let mut emit = |line: String| {
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(line.clone());
            events.event(Event::Output { node: node.clone(), line });
        };
        let mut on_output = |stream: OutputStream, bytes: &[u8]| {
            let slot = &mut lines[usize::from(matches!(stream, OutputStream::Stderr))];
            for line in slot.push(bytes, masker) {
                emit(line);
            }
        };
        let cancel = self.build.cancel.clone();
        let result = tokio::runtime::Handle::current().block_on(sandbox::run(&spec, &mut on_output, &cancel));
        for rest in lines.into_iter().filter_map(|l| l.finish(masker)) {
            emit(rest);
        }
        let code = match result {
            Ok(code) => code,
            Err(SandboxError::Cancelled) => return Err(ExecError::Interrupted),
            Err(e) => return Err(e.into()),
        };
        if code != 0 {
            let shown: Vec<&str> = tail.iter().map(String::as_str).collect();
            let help = if shown.is_empty() {
                "the command printed nothing".to_owned()
            } else {
                format!("last lines of output:\n{}", shown.join("\n"))
            };
            return Err(ExecError::step(
                self.build.ws,
                self.span,
                format!("`{}` failed with exit code {code}", one_line(&run.script)),
                &format!("exit code {code}"),
                Some(help),
            ));
        }
        let layer = layer_from_upper(self.build, &upper)?;
        // The upper folder already is this layer, unpacked and overlay-ready:
        // keep it as the snapshot the next step stands on. If that fails the
        // layer is simply unpacked when needed.
        let _ = engine.snapshots.adopt(&layer, &upper);
        Ok(layer)
    }

    /// Refuses, before anything is unpacked, a stack of layers deeper than
    /// overlayfs can mount (it would fail with a bare EINVAL). The copy
    /// fallback has no such limit.
    fn check_layer_count(&self) -> Result<(), ExecError> {
        let layers = self.parent_layers.len();
        if layers <= MAX_RUN_LAYERS {
            return Ok(());
        }
        if !matches!(sandbox::probe_in(&self.build.engine.home.tmp_dir()), sandbox::Backend::Overlay) {
            return Ok(());
        }
        Err(ExecError::step(
            self.build.ws,
            self.span,
            format!(
                "this step would run on {layers} layers, but overlayfs stacks at most {OVERLAY_MAX_LOWERS} folders \
                 (bake needs one of them), so a `run` step can sit on at most {MAX_RUN_LAYERS} layers"
            ),
            "too many layers below",
            Some(
                "squash the base image, or merge steps of the stages below: each `copy` and `run` adds a layer \
                 (Docker's overlay2 stops at 125)"
                    .to_owned(),
            ),
        ))
    }

    /// Cache folders and secret files for the step, and the locks of the
    /// cache folders it holds until it ends.
    fn mounts(&self, run: &Run, scratch: &Path) -> Result<(Vec<Mount>, Vec<std::fs::File>), ExecError> {
        let home = self.build.engine.home.root();
        let mut mounts = Vec::new();
        let mut locks = Vec::new();
        for cache in &run.caches {
            let id = crate::oci::hex(&blake3::hash(cache.id.as_bytes()).as_bytes()[..16]);
            let dir = home.join("cache-mounts");
            let (source, lock) = match cache.sharing {
                Sharing::Shared => (dir.join(&id), None),
                // One step at a time, in any bake process: wait for the lock.
                Sharing::Locked => {
                    let lock = self.lock_cache(&dir.join(format!("{id}.lock")), true)?;
                    (dir.join(&id), lock)
                }
                // A folder no other step is using: the first free instance.
                Sharing::Private => {
                    let mut n = 0;
                    loop {
                        let name = if n == 0 { id.clone() } else { format!("{id}-{n}") };
                        if let Some(lock) = self.lock_cache(&dir.join(format!("{name}.lock")), false)? {
                            break (dir.join(name), Some(lock));
                        }
                        n += 1;
                    }
                }
            };
            std::fs::create_dir_all(&source).map_err(|e| ExecError::Io { path: source.clone(), source: e })?;
            locks.extend(lock);
            mounts.push(Mount { source, target: cache.path.clone(), readonly: false });
        }
        // Context binds: the selected files copied into the scratch folder
        // (so ignored files stay out, and writes are thrown away with it).
        for (i, bind) in run.binds.iter().enumerate() {
            let dest = scratch.join(format!("bind-{i}"));
            let source = match self.binds.get(i) {
                Some(BindSource::Context(Some(read))) => materialize(read, &dest)?,
                Some(BindSource::Fs(result, name)) => {
                    let view = self.build.engine.snapshots.view(&result.layers)?;
                    let Some(root) = view.find(&bind.source, true)? else {
                        return Err(ExecError::step(
                            self.build.ws,
                            self.span,
                            format!("`{}` does not exist in {name}", bind.source),
                            "bind source not found",
                            None,
                        ));
                    };
                    materialize_fs(&view, &root, &dest)?
                }
                _ => return Err(ExecError::NoSelection),
            };
            mounts.push(Mount { source, target: self.in_workdir(&bind.target), readonly: bind.readonly });
        }
        // tmpfs: an empty folder for this step only, gone with the scratch folder.
        for (i, target) in run.tmpfs.iter().enumerate() {
            let dir = scratch.join(format!("tmpfs-{i}"));
            let io = |source| ExecError::Io { path: dir.clone(), source };
            std::fs::create_dir(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).map_err(io)?;
            mounts.push(Mount { source: dir.clone(), target: self.in_workdir(target), readonly: false });
        }
        for secret in &run.secrets {
            let given = self.build.options.secrets.iter().find(|s: &&Secret| s.id == secret.id);
            // The bytes read when the build started, as a private copy: what
            // the step can print is exactly what is masked.
            let value = given.and_then(|g| self.build.secrets.iter().find(|l| l.id == g.id));
            let source = match value {
                Some(loaded) => {
                    let path = secrets::scratch_path(scratch, &loaded.id);
                    write_private(&path, &loaded.value)?;
                    path
                }
                None if !secret.required => continue,
                None => {
                    return Err(ExecError::step(
                        self.build.ws,
                        self.span,
                        format!("secret `{}` was not given", secret.id),
                        "needs this secret",
                        Some(format!(
                            "pass it with --secret id={},src=FILE or --secret id={},env=VARIABLE, or mark it `required=#false`",
                            secret.id, secret.id
                        )),
                    ));
                }
            };
            // `env=` without a target: a variable only (see `run`).
            if !secret.target.is_empty() {
                mounts.push(Mount { source, target: secret.target.clone(), readonly: true });
            }
        }
        Ok((mounts, locks))
    }

    /// A mount target: absolute, or relative to the step's working folder.
    fn in_workdir(&self, target: &str) -> String {
        let joined = if target.starts_with('/') {
            target.to_owned()
        } else {
            format!("{}/{target}", self.config.workdir().trim_end_matches('/'))
        };
        crate::lang::clean_absolute(&joined)
    }

    /// An exclusive lock on a cache folder's lock file: waited for (until
    /// the build is cancelled) when `wait`, else `None` when it is taken.
    fn lock_cache(&self, path: &Path, wait: bool) -> Result<Option<std::fs::File>, ExecError> {
        let err = |e| ExecError::Io { path: path.to_path_buf(), source: e };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(err)?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(file)),
                Err(std::fs::TryLockError::WouldBlock) if !wait => return Ok(None),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if self.build.cancel.is_cancelled() {
                        return Err(ExecError::Interrupted);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
            }
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ExecError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| ExecError::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// Copies what a context bind selects to `dest`: the file itself when the
/// source is one file, else a folder holding the source's tree. Returns
/// what to mount.
fn materialize(read: &ContextRead, dest: &Path) -> Result<std::path::PathBuf, ExecError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExecError::Io { path, source }
    };
    let entries = &read.selection.entries;
    if let [only] = entries.as_slice()
        && only.path == only.root
        && only.kind == CtxKind::File
    {
        let from = read.root.join(&only.path);
        std::fs::copy(&from, dest).map_err(io(&from))?;
        return Ok(dest.to_path_buf());
    }
    std::fs::create_dir(dest).map_err(io(dest))?;
    for e in entries {
        let rel = if e.root == "." {
            e.path.as_str()
        } else {
            match e.path.strip_prefix(&e.root) {
                Some(rest) => rest.trim_start_matches('/'),
                None => continue,
            }
        };
        let to = if rel.is_empty() { dest.to_path_buf() } else { dest.join(rel) };
        let from = read.root.join(&e.path);
        match &e.kind {
            CtxKind::Dir => {
                std::fs::create_dir_all(&to).map_err(io(&to))?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(e.mode)).map_err(io(&to))?;
            }
            CtxKind::File => {
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                std::fs::copy(&from, &to).map_err(io(&from))?;
            }
            CtxKind::Symlink(target) => {
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                std::os::unix::fs::symlink(target, &to).map_err(io(&to))?;
            }
        }
    }
    Ok(dest.to_path_buf())
}

/// Copies a file or folder of a stage or image (owners, modes and links
/// kept) to `dest`, and returns what to mount.
fn materialize_fs(
    view: &crate::snapshot::MergedView,
    root: &crate::snapshot::Found,
    dest: &Path,
) -> Result<std::path::PathBuf, ExecError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExecError::Io { path, source }
    };
    let place = |f: &crate::snapshot::Found, to: &Path| -> Result<(), ExecError> {
        let ft = f.meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(to).map_err(io(to))?;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(f.meta.mode() & 0o7777)).map_err(io(to))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&f.real).map_err(io(&f.real))?;
            std::os::unix::fs::symlink(target, to).map_err(io(to))?;
        } else if ft.is_file() {
            std::fs::copy(&f.real, to).map_err(io(&f.real))?;
        } else {
            return Ok(()); // devices and fifos are not shown
        }
        std::os::unix::fs::lchown(to, Some(f.meta.uid()), Some(f.meta.gid())).map_err(io(to))
    };
    if !root.meta.is_dir() {
        place(root, dest)?;
        return Ok(dest.to_path_buf());
    }
    place(root, dest)?;
    let mut all = Vec::new();
    view.walk(root, &mut all)?;
    for (rel, f) in &all {
        place(f, &dest.join(rel))?;
    }
    Ok(dest.to_path_buf())
}

fn one_line(script: &str) -> String {
    let first = script.lines().next().unwrap_or_default().trim();
    if script.trim().lines().count() > 1 { format!("{first} ...") } else { first.to_owned() }
}

/// The upper folder of a step as a layer.
pub(super) fn layer_from_upper(build: &Build<'_>, upper: &Path) -> Result<LayerInfo, ExecError> {
    let mut items = Vec::new();
    walk(upper, "", &mut items)?;
    write_layer(build, items)
}

fn walk(root: &Path, rel: &str, items: &mut Vec<Item>) -> Result<(), ExecError> {
    let dir = root.join(rel);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExecError::Io { path, source }
    };
    let mut names: Vec<_> = std::fs::read_dir(&dir).map_err(io(&dir))?.collect::<Result<_, _>>().map_err(io(&dir))?;
    names.sort_by_key(std::fs::DirEntry::file_name);
    for entry in names {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let real = root.join(&path);
        let meta = std::fs::symlink_metadata(&real).map_err(io(&real))?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        let entry =
            |kind| Entry { path: path.clone(), kind, mode, uid: meta.uid(), gid: meta.gid(), xattrs: BTreeMap::new() };
        if ft.is_char_device() && meta.rdev() == 0 {
            items.push(Item { entry: entry(EntryKind::Whiteout), content: Content::None, link: None });
        } else if ft.is_dir() {
            items.push(Item { entry: entry(EntryKind::Dir), content: Content::None, link: None });
            if crate::snapshot::is_opaque(&real) {
                items.push(Item { entry: entry(EntryKind::Opaque), content: Content::None, link: None });
            }
            walk(root, &path, items)?;
        } else if ft.is_file() {
            let mut e = entry(EntryKind::File { size: meta.len() });
            if let Ok(Some(cap)) = xattr::get(&real, "security.capability") {
                e.xattrs.insert("security.capability".to_owned(), cap);
            }
            let link = (meta.nlink() > 1).then_some((meta.dev(), meta.ino()));
            items.push(Item { entry: e, content: Content::Snapshot(real), link });
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&real).map_err(io(&real))?.to_string_lossy().into_owned();
            items.push(Item { entry: entry(EntryKind::Symlink { target }), content: Content::None, link: None });
        } else if ft.is_char_device() || ft.is_block_device() {
            let rdev = meta.rdev();
            let major = u32::try_from(nix::sys::stat::major(rdev)).unwrap_or(0);
            let minor = u32::try_from(nix::sys::stat::minor(rdev)).unwrap_or(0);
            let kind = if ft.is_char_device() {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            };
            items.push(Item { entry: entry(kind), content: Content::None, link: None });
        } else if ft.is_fifo() {
            items.push(Item { entry: entry(EntryKind::Fifo), content: Content::None, link: None });
        }
        // Sockets a command left behind have no place in an image.
    }
    Ok(())
}
