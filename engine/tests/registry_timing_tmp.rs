#[path = "common/registry.rs"]
mod registry_harness;
use std::time::Instant;
use bake_engine::config::Config;
use bake_engine::registry::*;
#[tokio::test]
async fn timing() {
    let dir = tempfile::tempdir().unwrap();
    let store = bake_engine::store::Store::open(dir.path()).unwrap();
    let t = Instant::now();
    let registry = registry_harness::TestRegistry::start();
    eprintln!("start {:?}", t.elapsed());
    let addr = registry.addr.clone();
    let t = Instant::now();
    registry.kill();
    eprintln!("kill {:?}", t.elapsed());
    let c = Registry::with_options(&Config::default(), store, RegistryOptions { retry: RetryPolicy::NONE, concurrency: 1, credentials: Credentials::Anonymous }).unwrap();
    let t = Instant::now();
    let e = c.resolve(&bake_engine::reference::ImageRef::parse(&format!("{addr}/x/y:1")).unwrap()).await;
    eprintln!("resolve {:?} {:?}", t.elapsed(), e.err());
}
