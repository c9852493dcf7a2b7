//! The SPDX 2.3 JSON SBOM of an image: what [`scan`] finds in its layers
//! (Debian packages from dpkg's status database, `status.d/` included as
//! distroless images keep it; Go modules from the build information of Go
//! binaries), written by [`document`] in a fixed order, so that the same
//! image always gives the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;

use serde_json::{Value, json};

use super::AttestError;
use super::gobuildinfo;
use crate::layer::EntryKind;
use crate::oci::{Compression, Digest, media};
use crate::store::Store;

/// dpkg's status database, and the folder distroless images use instead.
const DPKG_STATUS: &str = "var/lib/dpkg/status";
const DPKG_STATUS_D: &str = "var/lib/dpkg/status.d/";
/// Files larger than this are not searched for Go build information.
const MAX_BINARY: u64 = 512 << 20;

/// A package the SBOM lists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// `deb` or `golang`, the purl type.
    pub kind: &'static str,
    pub name: String,
    pub version: String,
    /// For a Debian package.
    pub arch: Option<String>,
    /// For a Go module: the `h1:` hash.
    pub sum: Option<String>,
    /// Where it was found (the status file, or the Go binary).
    pub found_in: String,
}

/// What an image holds, as far as the SBOM goes.
#[derive(Debug, Default)]
pub struct Contents {
    pub packages: Vec<Package>,
}

/// One file of the merged filesystem, kept while the layers are read.
enum Kept {
    /// dpkg status text.
    Status(String),
    /// Packages from a Go binary.
    Go(Vec<Package>),
}

/// The compression a layer media type names.
fn compression(media_type: &str) -> Compression {
    if media_type.ends_with("gzip") {
        Compression::Gzip
    } else if media_type == media::OCI_LAYER_ZSTD {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Reads an image's layers from the store, bottom first, and lists its
/// packages: deletions in upper layers remove what lower ones held.
pub fn scan(store: &Store, layers: &[(Digest, String)]) -> Result<Contents, AttestError> {
    let mut files: BTreeMap<String, Kept> = BTreeMap::new();
    for (digest, media_type) in layers {
        let blob = std::io::BufReader::new(store.open_blob(digest)?);
        crate::layer::entries(blob, compression(media_type), |entry, content| {
            let path = entry.path;
            match entry.kind {
                EntryKind::Whiteout => {
                    let below = format!("{path}/");
                    files.retain(|p, _| *p != path && !p.starts_with(&below));
                }
                EntryKind::Opaque => {
                    let below = if path.is_empty() { String::new() } else { format!("{path}/") };
                    files.retain(|p, _| !p.starts_with(&below));
                }
                EntryKind::File { size } => {
                    files.remove(&path);
                    if path == DPKG_STATUS || (path.starts_with(DPKG_STATUS_D) && !path.ends_with(".md5sums")) {
                        let mut text = String::new();
                        content.take(size).read_to_string(&mut text).map_err(|e| read_error(&path, &e))?;
                        files.insert(path, Kept::Status(text));
                    } else if (64..=MAX_BINARY).contains(&size) {
                        let mut head = [0u8; 4];
                        if content.read_exact(&mut head).is_ok() && gobuildinfo::is_elf(&head) {
                            let mut bytes = head.to_vec();
                            content.read_to_end(&mut bytes).map_err(|e| read_error(&path, &e))?;
                            if let Some(info) = gobuildinfo::read(&bytes) {
                                files.insert(path.clone(), Kept::Go(go_packages(&info, &path)));
                            }
                        }
                    }
                }
                _ => {
                    files.remove(&path);
                }
            }
            Ok(())
        })?;
    }
    let mut packages = Vec::new();
    for (path, kept) in files {
        match kept {
            Kept::Status(text) => packages.extend(dpkg_packages(&text, &path)),
            Kept::Go(found) => packages.extend(found),
        }
    }
    packages.sort();
    packages.dedup_by(|a, b| a.kind == b.kind && a.name == b.name && a.version == b.version && a.arch == b.arch);
    Ok(Contents { packages })
}

fn read_error(path: &str, e: &std::io::Error) -> crate::layer::LayerError {
    crate::layer::LayerError::Read { layer: path.to_owned(), source: std::io::Error::new(e.kind(), e.to_string()) }
}

/// The modules of a Go binary as packages.
fn go_packages(info: &gobuildinfo::BuildInfo, path: &str) -> Vec<Package> {
    info.modules
        .iter()
        .map(|m| Package {
            kind: "golang",
            name: m.path.clone(),
            version: m.version.clone(),
            arch: None,
            sum: m.sum.clone(),
            found_in: format!("/{path}"),
        })
        .collect()
}

/// The installed packages of a dpkg status file: paragraphs of `Field:
/// value` lines; a paragraph whose `Status` does not end in `installed` is
/// left out (distroless `status.d/` files have no `Status`).
pub fn dpkg_packages(text: &str, path: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in paragraph.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim(), v.trim());
            }
        }
        let (Some(name), Some(version)) = (fields.get("Package"), fields.get("Version")) else { continue };
        if fields.get("Status").is_some_and(|s| !s.ends_with(" installed")) {
            continue;
        }
        out.push(Package {
            kind: "deb",
            name: (*name).to_owned(),
            version: (*version).to_owned(),
            arch: fields.get("Architecture").map(|a| (*a).to_owned()),
            sum: None,
            found_in: format!("/{path}"),
        });
    }
    out
}

/// The package URL of a package.
fn purl(p: &Package) -> String {
    match p.kind {
        "deb" => {
            let arch = p.arch.as_deref().map(|a| format!("?arch={a}")).unwrap_or_default();
            format!("pkg:deb/debian/{}@{}{arch}", purl_escape(&p.name), purl_escape(&p.version))
        }
        _ => format!("pkg:golang/{}@{}", p.name, purl_escape(&p.version)),
    }
}

/// Percent-encodes what a purl component may not hold as it is.
fn purl_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | '/') {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// An SPDX identifier: letters, digits, `.` and `-` only.
fn spdx_id(prefix: &str, i: usize, name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    format!("SPDXRef-{prefix}-{i}-{clean}")
}

/// The SPDX 2.3 document for the image `name` whose manifest is
/// `subject`: the image as the described package, containing every package
/// found. `created` is the build's timestamp (`SOURCE_DATE_EPOCH`); the
/// namespace is derived from the subject's digest.
pub fn document(name: &str, subject: &Digest, created: &str, contents: &Contents) -> Value {
    let image_id = "SPDXRef-Image";
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": name,
        "versionInfo": subject.to_string(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{ "algorithm": "SHA256", "checksumValue": subject.digest() }],
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for (i, p) in contents.packages.iter().enumerate() {
        let id = spdx_id(p.kind, i, &p.name);
        let mut package = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "sourceInfo": format!("found in {}", p.found_in),
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(p),
            }],
        });
        if let (Some(sum), Some(map)) = (&p.sum, package.as_object_mut()) {
            map.insert("comment".to_owned(), json!(format!("go.sum {sum}")));
        }
        packages.push(package);
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://spdx.org/spdxdocs/bake/{}", subject.digest()),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: bake-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let text = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\
                    Description: GNU C\n Library: continued\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
                    Package: base-files\nVersion: 12.4\nArchitecture: arm64\n";
        let got: Vec<(String, String, Option<String>)> =
            dpkg_packages(text, DPKG_STATUS).into_iter().map(|p| (p.name, p.version, p.arch)).collect();
        assert_eq!(
            got,
            [
                ("libc6".into(), "2.36-9".into(), Some("amd64".into())),
                ("base-files".into(), "12.4".into(), Some("arm64".into()))
            ]
        );
    }

    #[test]
    fn purls_escape_debian_versions() {
        let p = Package {
            kind: "deb",
            name: "libstdc++6".into(),
            version: "1:12.2.0-14".into(),
            arch: Some("amd64".into()),
            sum: None,
            found_in: String::new(),
        };
        assert_eq!(purl(&p), "pkg:deb/debian/libstdc%2B%2B6@1%3A12.2.0-14?arch=amd64");
        assert_eq!(spdx_id("deb", 3, "libstdc++6"), "SPDXRef-deb-3-libstdc--6");
    }
}
