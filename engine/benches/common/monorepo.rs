//! A generated monorepo: a root `build.kdl` that includes one `build.kdl` per
//! service, and a build context of many small files spread over the services'
//! folders.
//!
//! ```text
//! build.kdl                      include "services/*/build.kdl", args, targets
//! services/svc-007/build.kdl     base -> deps -> build -> test, image "svc-007"
//! services/svc-007/.dockerignore
//! services/svc-007/go.mod, go.sum, README.md, cmd/svc/main.go, config/*.yaml, testdata/basic.json
//! services/svc-007/pkg/m3/sub/deep/*.go, docs/m4/*.md, testdata/m5/*.json, ...
//! ```
//!
//! Everything is derived from the service number, so two runs write the same
//! tree byte for byte. Services are written in parallel: 100,000 files take
//! about two seconds on a fresh ext4 folder.
//!
//! Benches use [`cached`], which generates each fixture once under cargo's
//! bench scratch folder (`target/tmp`) and reuses it. A tree per run would be
//! slow for a reason outside bake: right after 100,000 files are deleted, ext4
//! takes 20-40 s to create as many again (inode allocation skips recently
//! freed inodes), and deleting them costs another 5 s.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

/// Files every service has whatever its share of `context_files`:
/// `.dockerignore`, `go.mod`, `go.sum`, `README.md`, `cmd/svc/main.go`,
/// `config/config.yaml`, `testdata/basic.json`.
const FIXED_FILES: usize = 7;

/// Top-level folders of a service, in the order folders are handed out.
const TOPS: &[&str] = &["pkg", "internal", "pkg", "docs", "testdata", "internal", "api"];

/// The fixture for these parameters, generated on first use and then reused.
///
/// Its folder name holds a hash of this file, so changing the generator makes
/// a new fixture (and removes the old one). Treat it as read-only: put indexes
/// and outputs elsewhere.
pub(crate) fn cached(services: usize, stages_per_service: usize, context_files: usize) -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-fixtures");
    let prefix = format!("monorepo-{services}-{stages_per_service}-{context_files}-");
    let version = blake3::hash(include_bytes!("monorepo.rs")).to_hex();
    let dir = base.join(format!("{prefix}{}", &version[..12]));
    let marker = dir.join(".complete");
    if marker.exists() {
        return dir;
    }
    // Write beside, then rename: an interrupted run never leaves a fixture
    // that looks complete.
    let partial = base.join(format!(".partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).expect("create fixture folder");
    generate(&partial, services, stages_per_service, context_files);
    fs::write(partial.join(".complete"), "").expect("write fixture marker");
    let _ = fs::remove_dir_all(&dir);
    if fs::rename(&partial, &dir).is_err() {
        // Another bench process finished the same fixture first.
        assert!(marker.exists(), "cannot move the fixture into {}", dir.display());
        let _ = fs::remove_dir_all(&partial);
    }
    for stale in fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = stale.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && stale.path() != dir {
            let _ = fs::remove_dir_all(stale.path());
        }
    }
    dir
}

/// Writes the monorepo under `root` (which must exist): `services` services,
/// each with `stages_per_service` stages (the last one an `image`), and
/// `context_files` files in the services' build contexts (at least
/// [`FIXED_FILES`] per service).
pub(crate) fn generate(root: &Path, services: usize, stages_per_service: usize, context_files: usize) {
    assert!(stages_per_service >= 1, "every service has at least its image");
    fs::write(root.join("build.kdl"), root_file(services, stages_per_service)).expect("write root build.kdl");
    let pool = text_pool();
    (0..services).into_par_iter().for_each(|i| {
        let dir = root.join("services").join(service_name(i));
        fs::create_dir_all(&dir).expect("create service folder");
        fs::write(dir.join("build.kdl"), service_file(i, stages_per_service)).expect("write service build.kdl");
        let share = context_files / services + usize::from(i < context_files % services);
        write_context(&dir, i, share, &pool);
    });
}

fn service_name(i: usize) -> String {
    format!("svc-{i:03}")
}

/// The root file: includes, workspace-wide args, and targets over every service.
fn root_file(services: usize, stages: usize) -> String {
    let mut s = String::from(
        "// Generated monorepo fixture: every service brings its own build.kdl.\n\
         include \"services/*/build.kdl\"\n\n\
         arg \"GO_VERSION\" default=\"1.22\"\n\
         arg \"VERSION\" default=\"dev\"\n\
         arg \"REGISTRY\" default=\"registry.example.com/acme\"\n\
         arg \"GOFLAGS\" default=\"-mod=readonly -trimpath\"\n\n\
         target \"default\"",
    );
    for i in 0..services {
        let _ = write!(s, " \\\n    \"{}\"", service_name(i));
    }
    s.push('\n');
    if stages >= 5 {
        s.push_str("target \"ci\" \"default\"");
        for i in 0..services {
            let _ = write!(s, " \\\n    \"{}-test\"", service_name(i));
        }
        s.push('\n');
    }
    s
}

/// One service's file: a builder chain of `stages - 1` stages, each `from=`
/// the one before, then the exported image.
fn service_file(i: usize, stages: usize) -> String {
    let name = service_name(i);
    let port = 8000 + i;
    let mut s = format!("// {name}: paths resolve from this folder, which is also the build context.\n\n");
    let _ = writeln!(s, "arg \"PORT_SVC{i:03}\" default=\"{port}\"\n");
    let chain = stages - 1;
    let mut names: Vec<String> = Vec::new();
    for k in 0..chain {
        let stage = match k {
            0 => format!("{name}-base"),
            1 => format!("{name}-deps"),
            2 => format!("{name}-build"),
            3 => format!("{name}-test"),
            _ => format!("{name}-tool{k}"),
        };
        // Stages past `test` hang off `build`, as linters and generators would.
        let from = match k {
            0 => "golang:${GO_VERSION}".to_owned(),
            4.. => names[2].clone(),
            _ => names[k - 1].clone(),
        };
        let _ = writeln!(s, "stage \"{stage}\" from=\"{from}\" {{");
        match k {
            0 => s.push_str(
                "    workdir \"/src\"\n    \
                 env \"CGO_ENABLED\" \"0\"\n    \
                 env \"GOFLAGS\" \"${GOFLAGS}\"\n    \
                 run \"apt-get update && apt-get install -y --no-install-recommends git make ca-certificates\" {\n        \
                 cache \"/var/cache/apt\" sharing=\"locked\"\n        \
                 cache \"/var/lib/apt/lists\" sharing=\"locked\"\n    \
                 }\n",
            ),
            1 => s.push_str(
                "    copy \"go.mod\" \"go.sum\" to=\"./\"\n    \
                 run \"go mod download\" {\n        \
                 cache \"/root/go/pkg/mod\" id=\"gomod\"\n    \
                 }\n",
            ),
            2 => {
                let _ = write!(
                    s,
                    "    copy \".\" to=\".\" exclude=\"**/*.md\" exclude=\"docs\" exclude=\"testdata\"\n    \
                     run \"go build -ldflags='-X main.version=${{VERSION}}' -o /out/app ./cmd/svc\" {{\n        \
                     cache \"/root/go/pkg/mod\" id=\"gomod\"\n        \
                     cache \"/root/.cache/go-build\" id=\"gobuild-{name}\"\n        \
                     env \"GOOS\" \"linux\"\n    \
                     }}\n"
                );
            }
            3 => s.push_str(
                "    copy \"testdata\" to=\"./testdata\"\n    \
                 run \"go vet ./... && go test -count=1 ./...\" {\n        \
                 cache \"/root/.cache/go-build\" id=\"gotest\" sharing=\"private\"\n        \
                 network \"none\"\n    \
                 }\n",
            ),
            _ => {
                let _ = write!(
                    s,
                    "    copy \"cmd/*/*.go\" \"go.mod\" to=\"./gen/\"\n    \
                     run \"go run ./tools/gen{k} ./gen\"\n"
                );
            }
        }
        s.push_str("}\n\n");
        names.push(stage);
    }
    // The image: from scratch, with the binary from the builder chain.
    let binary_from = names.get(2).or(names.last());
    let _ =
        writeln!(s, "image \"{name}\" from=\"{}\" {{", if binary_from.is_some() { "scratch" } else { "busybox:1.36" });
    if let Some(from) = binary_from {
        let _ = writeln!(s, "    copy \"/out/app\" to=\"/app\" from=\"{from}\" chmod=\"0755\"");
        let _ =
            writeln!(s, "    copy \"/etc/ssl/certs/ca-certificates.crt\" to=\"/etc/ssl/certs/\" from=\"{}\"", names[0]);
    }
    let _ = writeln!(s, "    copy \"config/*.yaml\" to=\"/etc/{name}/\" chown=\"65532:65532\"");
    let _ = writeln!(
        s,
        "    workdir \"/\"\n    \
         env \"PORT\" \"${{PORT_SVC{i:03}}}\"\n    \
         user \"65532:65532\"\n    \
         expose {port}\n    \
         entrypoint \"/app\" \"-config\" \"/etc/{name}/config.yaml\"\n    \
         cmd \"serve\"\n    \
         label \"org.opencontainers.image.title\" \"{name}\"\n    \
         label \"org.opencontainers.image.version\" \"${{VERSION}}\"\n    \
         tag \"${{REGISTRY}}/{name}:${{VERSION}}\" \"${{REGISTRY}}/{name}:latest\"\n\
         }}"
    );
    s
}

/// Writes `count` context files under a service folder: the fixed ones, then
/// folders of 20 to 50 files, nested up to three deep.
fn write_context(dir: &Path, service: usize, count: usize, pool: &[u8]) {
    let mut rng = Rng::new(service as u64);
    fs::write(dir.join(".dockerignore"), "# generated\n**/*.tmp\n.git\ntestdata/**/*.golden\n")
        .expect("write .dockerignore");
    fs::write(dir.join("go.mod"), format!("module example.com/acme/{}\n\ngo 1.22\n", service_name(service)))
        .expect("write go.mod");
    write_file(&dir.join("go.sum"), "go.sum", &mut rng, pool);
    write_file(&dir.join("README.md"), "README.md", &mut rng, pool);
    fs::create_dir_all(dir.join("cmd/svc")).expect("create cmd/svc");
    write_file(&dir.join("cmd/svc/main.go"), "main.go", &mut rng, pool);
    fs::create_dir_all(dir.join("config")).expect("create config");
    write_file(&dir.join("config/config.yaml"), "config.yaml", &mut rng, pool);
    fs::create_dir_all(dir.join("testdata")).expect("create testdata");
    write_file(&dir.join("testdata/basic.json"), "basic.json", &mut rng, pool);

    let mut left = count.saturating_sub(FIXED_FILES);
    let mut folder = 0;
    while left > 0 {
        let group = folder / 3;
        let top = TOPS[group % TOPS.len()];
        let rel = match folder % 3 {
            0 => format!("{top}/m{group}"),
            1 => format!("{top}/m{group}/sub"),
            _ => format!("{top}/m{group}/sub/deep"),
        };
        let path = dir.join(&rel);
        fs::create_dir_all(&path).expect("create context folder");
        let n = left.min(rng.range(20, 51));
        for f in 0..n {
            // `config/` gets a few more YAML files now and then, so its glob
            // selects more than one.
            let (name, place) = if f == 0 && folder % 12 == 0 {
                (format!("m{group}.yaml"), dir.join("config"))
            } else {
                (file_name(top, f, &mut rng), path.clone())
            };
            write_file(&place.join(&name), &name, &mut rng, pool);
        }
        left -= n;
        folder += 1;
    }
}

/// A file name that fits the folder: mostly Go sources, with tests, notes,
/// fixtures and some editor leftovers that `.dockerignore` drops.
fn file_name(top: &str, index: usize, rng: &mut Rng) -> String {
    let roll = rng.range(0, 100);
    match top {
        "docs" => format!("page{index}.md"),
        "testdata" if roll < 15 => format!("case{index}.golden"),
        "testdata" => format!("case{index}.json"),
        _ if roll < 3 => format!("scratch{index}.tmp"),
        _ if roll < 6 => format!("NOTES{index}.md"),
        _ if roll < 30 => format!("file{index}_test.go"),
        _ => format!("file{index}.go"),
    }
}

/// Writes a small file: a header naming it, then a slice of the text pool.
/// Sizes: most under 1 KiB, some up to 4 KiB, a few up to 16 KiB.
fn write_file(path: &Path, name: &str, rng: &mut Rng, pool: &[u8]) {
    let size = match rng.range(0, 100) {
        0..80 => rng.range(32, 1024),
        80..98 => rng.range(1024, 4096),
        _ => rng.range(4096, 16384),
    };
    let start = rng.range(0, pool.len() - size);
    let mut body = format!("// {name}\n").into_bytes();
    body.extend_from_slice(&pool[start..start + size]);
    fs::write(path, body).expect("write context file");
}

/// 64 KiB of word-like text to slice file contents from.
fn text_pool() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "func", "return", "err", "nil", "if", "for", "range", "package", "import", "struct", "type", "context", "ctx",
        "string", "int", "map", "go", "defer", "var", ":=", "{", "}", "(", ")", "handler", "request", "response",
        "config", "server", "client", "\n\t", "\n",
    ];
    let mut rng = Rng::new(0x5eed);
    let mut pool = Vec::with_capacity(70_000);
    while pool.len() < 65_536 {
        pool.extend_from_slice(WORDS[rng.range(0, WORDS.len())].as_bytes());
        pool.push(b' ');
    }
    pool
}

/// splitmix64: small, fast and deterministic; the fixture needs no more.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        // The modulo bias is irrelevant for a fixture.
        lo + usize::try_from(self.next() % (hi - lo) as u64).expect("fits")
    }
}
