//! Tests at the seams of `exec`, without root, a registry or a sandbox: the
//! scheduler driven by a fake executor over a real plan and a real store in
//! a temporary folder (whose results the real local-store resolver finds),
//! and each resolver alone.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use petgraph::graph::NodeIndex;
use tokio_util::sync::CancellationToken;

use super::execute::record;
use super::fetch::Origin;
use super::resolve::{Hit, LocalStore, Resolver, local_walk};
use super::schedule::{Executor, Scheduler, State, StepOutcome, View};
use super::{Event, ExecError, FsResult};
use crate::Tier;
use crate::graph::{Key, KeyOptions, Plan, describe};
use crate::lang::{LoadOptions, Workspace};
use crate::store::Store;

/// `a` and `b` are independent; `c` copies from `a`; `d` copies from `b`.
/// (A `run` needs a shell: one is copied in first.)
const BUILD: &str = r#"
stage "a" from="scratch" {
    copy "sh" to="/bin/sh"
    run "a1"
    run "a2"
}
stage "b" from="scratch" {
    copy "sh" to="/bin/sh"
    run "b1"
}
stage "c" from="scratch" {
    copy "/x" from="a" to="/x"
    run "c1"
}
stage "d" from="scratch" {
    copy "/y" from="b" to="/y"
    run "d1"
}
"#;

/// A workspace, its plan for `targets`, keyed, and a store.
struct World {
    _dir: tempfile::TempDir,
    ws: Workspace,
    plan: Plan,
    store: Store,
}

fn world(text: &str, targets: &[&str], store_dir: &std::path::Path) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sh"), "a shell").expect("write");
    let ws = crate::lang::load_str("build.kdl", dir.path(), text, &LoadOptions::default()).expect("load");
    let targets: Vec<String> = targets.iter().map(|t| (*t).to_owned()).collect();
    let mut plan = Plan::build(&ws, &targets).expect("plan");
    plan.compute_keys(&ws, &KeyOptions::default()).expect("keys");
    let store = Store::open(store_dir).expect("store");
    World { _dir: dir, ws, plan, store }
}

/// What a fake step does besides returning a result.
#[derive(Default)]
struct Script {
    /// Steps (by their description's end, "run b1") that fail.
    fail: Vec<&'static str>,
    /// Steps that panic.
    panic: Vec<&'static str>,
    /// A step that fires this token (Ctrl-C while it runs).
    interrupt: Option<(&'static str, CancellationToken)>,
    /// How long each step takes.
    delay: Duration,
    /// Steps wait (up to 300 ms) until this many run at once, so a limit
    /// is reached by rendezvous rather than by hoping sleeps overlap.
    meet: usize,
    /// Results that come out the same whatever the key (a `copy` whose
    /// source rebuilt identically); the others differ with the key.
    stable: Vec<&'static str>,
}

/// The fallback executor, faked: records what it runs and how many at once.
struct Fake<'w> {
    w: &'w World,
    script: Script,
    /// Nodes whose registry origin cannot be fetched.
    unfetchable: HashSet<NodeIndex>,
    executed: Mutex<Vec<String>>,
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl<'w> Fake<'w> {
    fn new(w: &'w World, script: Script) -> Self {
        Self {
            w,
            script,
            unfetchable: HashSet::new(),
            executed: Mutex::new(Vec::new()),
            now: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    fn label(&self, n: NodeIndex) -> String {
        describe(&self.w.plan.graph[n], &self.w.ws)
    }

    fn executed(&self) -> Vec<String> {
        self.executed.lock().expect("lock").clone()
    }

    fn ran(&self, what: &str) -> bool {
        self.executed().iter().any(|e| e.ends_with(what))
    }
}

impl Executor for Fake<'_> {
    fn materialize(&self, view: &View, n: NodeIndex) -> Result<(), ExecError> {
        if view.origins.contains_key(&n) && self.unfetchable.contains(&n) {
            return Err(ExecError::CacheFetch {
                node: self.w.plan.graph[n].id.clone(),
                index: n.index(),
                message: "gone".to_owned(),
            });
        }
        Ok(())
    }

    fn execute(&self, view: &View, n: NodeIndex) -> Result<FsResult, ExecError> {
        let label = self.label(n);
        // Every input is done before a node runs.
        for p in self.w.plan.graph.neighbors_directed(n, petgraph::Direction::Incoming) {
            assert!(view.has_result(p), "{label} started before {}", self.label(p));
        }
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let waiting = std::time::Instant::now();
        while self.now.load(Ordering::SeqCst) < self.script.meet && waiting.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(self.script.delay);
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.executed.lock().expect("lock").push(label.clone());
        if let Some((step, token)) = &self.script.interrupt
            && label.ends_with(step)
        {
            token.cancel();
            return Err(ExecError::Interrupted);
        }
        assert!(!self.script.panic.iter().any(|s| label.ends_with(s)), "the fake step {label} panics");
        if self.script.fail.iter().any(|s| label.ends_with(s)) {
            return Err(ExecError::MissingBlob { what: "layer", digest: label });
        }
        let key = self.w.plan.graph[n].key.expect("keyed");
        let content = if self.script.stable.iter().any(|s| label.ends_with(s)) {
            label
        } else {
            format!("{label} {}", key.to_hex())
        };
        let config = self.w.store.put_blob(content.as_bytes())?;
        Ok(FsResult { layers: Vec::new(), config })
    }

    fn record(&self, key: &Key, result: &FsResult, out: Option<Key>) -> Result<(), ExecError> {
        record(&self.w.store, key, result, out)
    }

    fn prefetch_exports(&self, view: &View) -> Result<(), ExecError> {
        for &root in &self.w.plan.roots {
            self.materialize(view, root)?;
        }
        Ok(())
    }
}

/// Events, kept.
#[derive(Default)]
struct Heard(Mutex<Vec<Event>>);

impl super::Events for Heard {
    fn event(&self, event: Event) {
        self.0.lock().expect("lock").push(event);
    }
}

impl Heard {
    fn warnings(&self) -> Vec<String> {
        let events = self.0.lock().expect("lock");
        events
            .iter()
            .filter_map(|e| if let Event::Warning { message } = e { Some(message.clone()) } else { None })
            .collect()
    }

    fn cutoffs(&self) -> Vec<String> {
        let events = self.0.lock().expect("lock");
        events
            .iter()
            .filter_map(|e| match e {
                Event::Cached { description, cutoff: true, .. } => Some(description.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Options of one scheduled run.
struct Opts {
    jobs: usize,
    keep_going: bool,
    interrupt: CancellationToken,
}

impl Default for Opts {
    fn default() -> Self {
        Self { jobs: 4, keep_going: false, interrupt: CancellationToken::new() }
    }
}

/// Runs the scheduler over `w` with the local store as its resolver and
/// `fake` as its executor, from the hits `hits` (or the local store's).
fn schedule(
    w: &World,
    fake: &Fake<'_>,
    heard: &Heard,
    opts: &Opts,
    hits: Option<HashMap<NodeIndex, Hit>>,
) -> (State, Result<Vec<ExecError>, ExecError>) {
    let local = LocalStore { store: &w.store };
    let hits = match hits {
        Some(h) => h,
        None => local_walk(&w.plan, &local).expect("lookups"),
    };
    let resolvers: [&dyn Resolver; 1] = [&local];
    let cancel = opts.interrupt.child_token();
    let scheduler = Scheduler {
        plan: &w.plan,
        ws: &w.ws,
        resolvers: &resolvers,
        executor: fake,
        events: heard,
        jobs: opts.jobs,
        keep_going: opts.keep_going,
        no_cache: false,
        interrupt: &opts.interrupt,
        cancel: &cancel,
    };
    let mut state = State::default();
    let result = scheduler.run(&mut state, hits);
    (state, result)
}

fn node(w: &World, label: &str) -> NodeIndex {
    w.plan.graph.node_indices().find(|n| describe(&w.plan.graph[*n], &w.ws).ends_with(label)).expect(label)
}

#[test]
fn every_node_runs_after_its_inputs_and_once() {
    let store = tempfile::tempdir().expect("tempdir");
    let w = world(BUILD, &["c", "d"], store.path());
    let fake = Fake::new(&w, Script::default());
    let heard = Heard::default();
    let (state, result) = schedule(&w, &fake, &heard, &Opts::default(), None);
    assert!(result.expect("build").is_empty());
    let executed = fake.executed();
    // The fake asserts each node's inputs were done; here, the order seen.
    let at = |s: &str| executed.iter().position(|e| e.ends_with(s)).unwrap_or_else(|| panic!("{s} in {executed:?}"));
    assert!(at("run a1") < at("run a2") && at("run a2") < at("stage a") && at("stage a") < at("-> /x"));
    assert!(at("-> /x") < at("run c1") && at("run b1") < at("-> /y") && at("-> /y") < at("run d1"));
    let unique: HashSet<&String> = executed.iter().collect();
    assert_eq!(unique.len(), executed.len(), "{executed:?}");
    assert_eq!(state.count(|s| s == StepOutcome::Ran), 9, "sh a1 a2 sh b1 copy c1 copy d1");

    // Again: everything is found in the store, nothing runs.
    let again = Fake::new(&w, Script::default());
    let (state, result) = schedule(&w, &again, &heard, &Opts::default(), None);
    assert!(result.expect("build").is_empty());
    assert!(again.executed().is_empty(), "{:?}", again.executed());
    assert_eq!(state.count(|s| s == StepOutcome::Ran), 0);
}

#[test]
fn no_more_steps_run_at_once_than_jobs() {
    let mut text = String::new();
    for i in 0..6 {
        let _ =
            write!(text, "stage \"s{i}\" from=\"scratch\" {{\n    copy \"sh\" to=\"/bin/sh\"\n    run \"r{i}\"\n}}\n");
    }
    let targets: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    for jobs in [1, 2, 3] {
        let store = tempfile::tempdir().expect("tempdir");
        let w = world(&text, &targets, store.path());
        let fake = Fake::new(&w, Script { delay: Duration::from_millis(5), meet: jobs, ..Script::default() });
        let opts = Opts { jobs, ..Opts::default() };
        let (_, result) = schedule(&w, &fake, &Heard::default(), &opts, None);
        assert!(result.expect("build").is_empty());
        assert_eq!(fake.executed().len(), 18, "six copies, six runs, six stages");
        assert_eq!(fake.peak.load(Ordering::SeqCst), jobs, "--jobs {jobs}");
    }
}

#[test]
fn an_interrupt_stops_the_build_and_starts_nothing_more() {
    let store = tempfile::tempdir().expect("tempdir");
    // Ctrl-C during the first step (a shell copied into `a` or `b`): the
    // other branch does not depend on it, only the interrupt keeps it from
    // starting.
    let w = world(BUILD, &["c", "d"], store.path());
    let interrupt = CancellationToken::new();
    let fake =
        Fake::new(&w, Script { interrupt: Some(("copy sh -> /bin/sh", interrupt.clone())), ..Script::default() });
    let opts = Opts { jobs: 1, interrupt, ..Opts::default() };
    let (_, result) = schedule(&w, &fake, &Heard::default(), &opts, None);
    assert!(matches!(result, Err(ExecError::Interrupted)), "{result:?}");
    let executed = fake.executed();
    assert_eq!(executed.len(), 1, "{executed:?}");
}

#[test]
fn a_failure_stops_the_build_and_keep_going_finishes_the_independent_branches() {
    let store = tempfile::tempdir().expect("tempdir");
    let w = world(BUILD, &["c", "d"], store.path());
    let script = || Script { fail: vec!["run b1"], delay: Duration::from_millis(5), ..Script::default() };

    let fake = Fake::new(&w, script());
    let opts = Opts { jobs: 1, ..Opts::default() };
    let (_, result) = schedule(&w, &fake, &Heard::default(), &opts, None);
    assert!(matches!(result, Err(ExecError::MissingBlob { .. })), "{result:?}");
    assert!(!fake.ran("stage b"));

    let store = tempfile::tempdir().expect("tempdir");
    let w = world(BUILD, &["c", "d"], store.path());
    let fake = Fake::new(&w, script());
    let opts = Opts { jobs: 1, keep_going: true, ..Opts::default() };
    let (state, result) = schedule(&w, &fake, &Heard::default(), &opts, None);
    let failures = result.expect("keep going returns the failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    // The branch without b1 is complete; b's dependents never started.
    for done in ["run a1", "run a2", "stage a", "-> /x", "run c1", "stage c"] {
        assert!(fake.ran(done), "{done}: {:?}", fake.executed());
    }
    for skipped in ["stage b", "-> /y", "run d1", "stage d"] {
        assert!(!fake.ran(skipped), "{skipped}: {:?}", fake.executed());
    }
    assert!(state.view.has_result(node(&w, "stage c")) && !state.view.has_result(node(&w, "stage d")));
}

#[test]
fn a_panicking_step_is_a_bug_and_the_build_ends() {
    let store = tempfile::tempdir().expect("tempdir");
    let w = world(BUILD, &["c", "d"], store.path());
    let fake = Fake::new(&w, Script { panic: vec!["run c1"], ..Script::default() });
    let (_, result) = schedule(&w, &fake, &Heard::default(), &Opts::default(), None);
    let e = result.expect_err("the panic fails the build");
    assert!(matches!(&e, ExecError::Panicked { node } if node.contains('c')), "{e:?}");
    assert_eq!(e.tier(), Tier::Bug);
}

#[test]
fn an_unchanged_copy_spares_the_steps_after_it() {
    let store = tempfile::tempdir().expect("tempdir");
    let script = || Script { stable: vec!["-> /x"], ..Script::default() };
    let w = world(BUILD, &["c"], store.path());
    let first = Fake::new(&w, script());
    let (_, result) = schedule(&w, &first, &Heard::default(), &Opts::default(), None);
    assert!(result.expect("build").is_empty());
    assert!(first.ran("run c1"));

    // `a` changes; the copy from it comes out the same: `c1` is not run.
    let w = world(&BUILD.replace("run \"a2\"", "run \"a2 changed\""), &["c"], store.path());
    let second = Fake::new(&w, script());
    let heard = Heard::default();
    let (state, result) = schedule(&w, &second, &heard, &Opts::default(), None);
    assert!(result.expect("build").is_empty());
    assert!(second.ran("run a2 changed") && second.ran("-> /x"), "{:?}", second.executed());
    assert!(!second.ran("run c1"), "{:?}", second.executed());
    assert_eq!(heard.cutoffs(), vec!["c: run c1".to_owned()]);
    assert_eq!(state.steps.get(&node(&w, "run c1")), Some(&StepOutcome::Cached));
    assert!(state.effective.contains_key(&node(&w, "run c1")));

    // When the copy's result changes, the cutoff does not apply.
    let w = world(&BUILD.replace("run \"a2\"", "run \"a2 again\""), &["c"], store.path());
    let third = Fake::new(&w, Script::default());
    let (_, result) = schedule(&w, &third, &Heard::default(), &Opts::default(), None);
    assert!(result.expect("build").is_empty());
    assert!(third.ran("run c1"), "{:?}", third.executed());
}

#[test]
fn a_registry_hit_that_cannot_be_fetched_is_built_here() {
    let store = tempfile::tempdir().expect("tempdir");
    let w = world(BUILD, &["c"], store.path());
    // The registry cache had stage `a`; its layers cannot be fetched.
    let stage_a = node(&w, "stage a");
    let config = w.store.put_blob(b"a from the cache").expect("blob");
    let origin = Origin {
        image: crate::reference::ImageRef::parse(
            "registry.example/cache@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )
        .expect("reference"),
        name: "cache".to_owned(),
        cache_key: w.plan.graph[stage_a].key,
    };
    let hit = Hit { result: FsResult { layers: Vec::new(), config }, out: None, origin: Some(origin) };
    let mut fake = Fake::new(&w, Script::default());
    fake.unfetchable.insert(stage_a);
    let heard = Heard::default();
    let (state, result) = schedule(&w, &fake, &heard, &Opts::default(), Some(HashMap::from([(stage_a, hit)])));
    assert!(result.expect("build").is_empty());
    // Demoted: built here with what it needs, then what copies from it.
    for done in ["run a1", "run a2", "stage a", "-> /x", "run c1"] {
        assert!(fake.ran(done), "{done}: {:?}", fake.executed());
    }
    let warnings = heard.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("could not be fetched (gone); building it here"), "{warnings:?}");
    assert!(state.view.demoted.contains(&stage_a));
    assert!(!state.view.origins.contains_key(&stage_a));
}

#[test]
fn the_local_store_resolver_finds_what_was_recorded() {
    let store = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store.path()).expect("store");
    let local = LocalStore { store: &store };
    let (key, other) = (Key([1; 32]), Key([2; 32]));
    let n = NodeIndex::new(0);
    assert!(local.resolve(n, &key, &View::default()).expect("lookup").is_none());
    let result = FsResult { layers: Vec::new(), config: store.put_blob(b"{}").expect("blob") };
    record(&store, &key, &result, Some(other)).expect("record");
    let hit = local.resolve(n, &key, &View::default()).expect("lookup").expect("a hit");
    assert_eq!((hit.result, hit.out, hit.origin.is_none()), (result, Some(other), true));
    assert!(local.resolve(n, &other, &View::default()).expect("lookup").is_none());
}

#[path = "../../tests/common/fake_registry.rs"]
mod fake_registry;

/// A registry cache that has an entry under every tag, with no layers, and
/// counts the requests.
fn cache_registry() -> fake_registry::FakeRegistry {
    use crate::oci::{canonical_json, digest_of, media};
    let config = canonical_json(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "config": {}
    }))
    .expect("json");
    let config_digest = digest_of(&config);
    let manifest = canonical_json(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": []
    }))
    .expect("json");
    fake_registry::FakeRegistry::start(move |_, path| {
        if path == "/v2/" {
            fake_registry::Reply::status(200)
        } else if path.contains("/manifests/") {
            fake_registry::Reply::json(media::OCI_MANIFEST, manifest.clone())
        } else if path.ends_with(&config_digest.to_string()) {
            fake_registry::Reply::json("application/octet-stream", config.clone())
        } else {
            fake_registry::Reply::status(404)
        }
    })
}

#[test]
fn the_registry_cache_resolver_asks_its_cache_unless_the_node_was_demoted() {
    let fake = cache_registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(BUILD, &["c"], &dir.path().join("store"));
    let config = crate::config::Config::default();
    let engine = super::Engine {
        home: crate::home::Home::new(dir.path().join("home")),
        store: w.store.clone(),
        snapshots: crate::snapshot::Snapshots::new(dir.path().join("snapshots"), w.store.clone()),
        registry: crate::registry::Registry::new(&config, w.store.clone()).expect("registry"),
        max_size: None,
    };
    let options = super::BuildOptions {
        cache_from: vec![format!("{}/cache", fake.addr).parse().expect("cache reference")],
        ..super::BuildOptions::default()
    };
    let heard = Heard::default();
    let build = super::execute::Build::new(&engine, &w.ws, &options, &heard);
    let cache = super::remote::RemoteCache::new(&build, &w.ws);
    let resolver = super::resolve::RegistryCache { cache: &cache };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _inside = runtime.enter();
    let n = node(&w, "run c1");
    let key = w.plan.graph[n].key.expect("keyed");

    let hit = resolver.resolve(n, &key, &View::default()).expect("lookup").expect("the cache has it");
    let origin = hit.origin.expect("a registry hit says where its layers are");
    assert_eq!(origin.cache_key, Some(key));
    assert!(origin.image.to_string().starts_with(&format!("{}/cache@sha256:", fake.addr)), "{}", origin.image);
    let asked = fake.requests();
    assert!(asked > 0);

    let demoted = View { demoted: HashSet::from([n]), ..View::default() };
    assert!(resolver.resolve(n, &key, &demoted).expect("lookup").is_none(), "a demoted node is built here");
    assert_eq!(fake.requests(), asked, "and its cache is not asked");
    assert!(heard.warnings().is_empty(), "{:?}", heard.warnings());
}

#[test]
fn foreign_run_steps_need_an_emulator_before_anything_runs() {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let w = world(
        r#"
stage "native" from="busybox" platform="linux/amd64" { run "true" }
stage "arm" from="busybox" platform="linux/arm64" { run "uname -m" }
stage "copied" from="scratch" platform="linux/arm64" { copy "sh" to="/sh" }
"#,
        &["native", "arm", "copied"],
        store_dir.path(),
    );
    let binfmt = tempfile::tempdir().expect("tempdir");
    let none = HashMap::new();
    // amd64 is native here; the arm64 `run` needs qemu-aarch64 (a `copy`
    // into an arm64 stage needs nothing).
    let err = super::check_emulation(&w.ws, &w.plan, &none, binfmt.path()).expect_err("no binfmt_misc");
    assert!(matches!(err, ExecError::Emulation(_)), "{err:?}");
    assert_eq!(err.tier(), Tier::Environment);
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    std::fs::write(binfmt.path().join("status"), "enabled\n").expect("write");
    std::fs::write(binfmt.path().join("qemu-aarch64"), "enabled\ninterpreter /q\nflags: PF\n").expect("write");
    super::check_emulation(&w.ws, &w.plan, &none, binfmt.path()).expect("qemu-aarch64 registered");
    // A step whose result a resolver has never runs, so needs no emulator.
    std::fs::remove_file(binfmt.path().join("qemu-aarch64")).expect("remove");
    let arm = node(&w, "run uname -m");
    let config = crate::oci::digest_of(b"{}");
    let hits = HashMap::from([(arm, Hit { result: FsResult { layers: Vec::new(), config }, out: None, origin: None })]);
    super::check_emulation(&w.ws, &w.plan, &hits, binfmt.path()).expect("cached");
}
