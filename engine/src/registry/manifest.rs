//! Reading manifests as registries serve them: OCI and Docker v2 media types,
//! indexes and manifest lists resolved to the platform a build wants.
//!
//! Docker's schema-2 manifests, manifest lists and image configs are the same
//! JSON as their OCI counterparts with other media types, so they deserialize
//! into oci-spec's types. The parsed manifest has its media types converted to
//! OCI's (a Docker gzip layer becomes an OCI gzip layer), so that images built
//! on top of it are plain OCI. The raw bytes are never re-serialized: they
//! are stored as served, under the digest the registry and the user know.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::oci::media;
use crate::platform::Platform;

/// Docker's uncompressed layer media type (rare; not in [`media`]).
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// What a manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An OCI index or a Docker manifest list.
    Index,
    /// An OCI image manifest or a Docker schema-2 manifest.
    Manifest,
}

/// A manifest that bake cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// Not JSON, or not the shape its media type promises.
    Invalid(String),
    /// A media type bake does not read (Docker schema 1, artifacts, ...).
    Unsupported { media_type: String, help: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
}

/// The media type and kind of a raw manifest. Documents without a
/// `mediaType` (OCI allows that) are recognised by their shape.
pub(crate) fn detect(raw: &[u8]) -> Result<(String, Kind), Unusable> {
    let probe: Probe =
        serde_json::from_slice(raw).map_err(|e| Unusable::Invalid(format!("not a JSON manifest: {e}")))?;
    if probe.schema_version == Some(1) {
        return Err(Unusable::Unsupported {
            media_type: "Docker schema 1 manifest".to_owned(),
            help: "schema 1 is deprecated and unsupported; push the image again with a recent Docker".to_owned(),
        });
    }
    let media_type = match probe.media_type {
        Some(m) => m,
        None if probe.manifests.is_some() => media::OCI_INDEX.to_owned(),
        None if probe.config.is_some() => media::OCI_MANIFEST.to_owned(),
        None => return Err(Unusable::Invalid("neither an image manifest nor an index".to_owned())),
    };
    match media_type.as_str() {
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => Ok((media_type, Kind::Index)),
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => Ok((media_type, Kind::Manifest)),
        _ => Err(Unusable::Unsupported {
            help: "bake pulls container images: OCI image manifests and indexes, Docker schema-2 manifests and \
                   manifest lists"
                .to_owned(),
            media_type,
        }),
    }
}

/// The platform an index entry or an image config names, normalized.
pub(crate) fn platform_of(p: &oci_spec::image::Platform) -> Platform {
    Platform::new(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref().unwrap_or(""))
}

/// Picks the entry of an index for `wanted`: the best match in containerd's
/// order ([`Platform::candidates`]), the first of equals; else a nested
/// index that may hold one (without a platform, or a matching one). When
/// there is none, the inner error lists the platforms on offer.
pub(crate) fn select(raw: &[u8], wanted: &Platform) -> Result<Result<Descriptor, String>, Unusable> {
    let index: ImageIndex =
        serde_json::from_slice(raw).map_err(|e| Unusable::Invalid(format!("not a valid image index: {e}")))?;
    let is_manifest =
        |d: &&Descriptor| matches!(d.media_type().to_string().as_str(), media::OCI_MANIFEST | media::DOCKER_MANIFEST);
    let candidates = wanted.candidates();
    let rank = |d: &Descriptor| {
        let offered = platform_of(d.platform().as_ref()?);
        candidates.iter().position(|c| *c == offered)
    };
    let best = index
        .manifests()
        .iter()
        .filter(is_manifest)
        .enumerate()
        .filter_map(|(i, d)| rank(d).map(|r| (r, i, d)))
        .min_by_key(|(r, i, _)| (*r, *i));
    if let Some((_, _, best)) = best {
        return Ok(Ok(best.clone()));
    }
    // An index of indexes: follow the first one that may hold the platform;
    // the caller bounds the depth.
    let is_index =
        |d: &&Descriptor| matches!(d.media_type().to_string().as_str(), media::OCI_INDEX | media::DOCKER_MANIFEST_LIST);
    if let Some(nested) =
        index.manifests().iter().filter(is_index).find(|d| d.platform().is_none() || rank(d).is_some())
    {
        return Ok(Ok(nested.clone()));
    }
    Ok(Err(available(&index)))
}

/// The platforms an index offers, sorted, for an error.
fn available(index: &ImageIndex) -> String {
    let mut available: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| platform_of(p).to_string())
        // BuildKit's attestation manifests.
        .filter(|p| !p.starts_with("unknown/"))
        .collect();
    available.sort();
    available.dedup();
    if available.is_empty() { "no platform at all".to_owned() } else { available.join(", ") }
}

/// Checks that an image config is for `wanted` (a single-platform manifest
/// says its platform only there). A config that names no architecture is
/// taken as it is. Returns the platform the config names otherwise.
pub(crate) fn check_config_platform(config: &ImageConfiguration, wanted: &Platform) -> Result<(), Platform> {
    let arch = config.architecture().to_string();
    if arch.is_empty() {
        return Ok(());
    }
    let offered = Platform::new(&config.os().to_string(), &arch, config.variant().as_deref().unwrap_or(""));
    if wanted.rank(&offered).is_some() { Ok(()) } else { Err(offered) }
}

/// Parses an image manifest (OCI or Docker schema 2), with its media types
/// converted to OCI's.
pub(crate) fn parse_manifest(raw: &[u8]) -> Result<ImageManifest, Unusable> {
    let mut manifest: ImageManifest =
        serde_json::from_slice(raw).map_err(|e| Unusable::Invalid(format!("not a valid image manifest: {e}")))?;
    if manifest.schema_version() != 2 {
        return Err(Unusable::Invalid(format!("schema version {} (expected 2)", manifest.schema_version())));
    }
    manifest.set_media_type(Some(MediaType::ImageManifest));
    let mut config = manifest.config().clone();
    config.set_media_type(to_oci(config.media_type()));
    manifest.set_config(config);
    for layer in manifest.layers_mut() {
        let converted = to_oci(layer.media_type());
        layer.set_media_type(converted);
    }
    Ok(manifest)
}

/// The OCI media type for a Docker one; others are kept.
fn to_oci(media_type: &MediaType) -> MediaType {
    match media_type.to_string().as_str() {
        media::DOCKER_CONFIG => MediaType::ImageConfig,
        media::DOCKER_LAYER_GZIP => MediaType::ImageLayerGzip,
        DOCKER_LAYER => MediaType::ImageLayer,
        media::DOCKER_LAYER_FOREIGN => MediaType::ImageLayerNonDistributableGzip,
        _ => media_type.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_MANIFEST: &str = r#"{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 1457,
      "digest": "sha256:a416a98b71e224a31ee99cff8e16063554498227d2b696152a9c3e0aa65e5824"
   },
   "layers": [
      {
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 2220094,
         "digest": "sha256:3d2430473443f0a9b2a8e2a1d5b5d7a9f0f4e6a6b2c0e6b0f5d4b3a2c1d0e9f8"
      },
      {
         "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
         "size": 10,
         "digest": "sha256:4d2430473443f0a9b2a8e2a1d5b5d7a9f0f4e6a6b2c0e6b0f5d4b3a2c1d0e9f8",
         "urls": ["https://example.com/layer"]
      }
   ]
}"#;

    #[test]
    fn docker_manifests_become_oci() {
        assert_eq!(detect(DOCKER_MANIFEST.as_bytes()), Ok((media::DOCKER_MANIFEST.to_owned(), Kind::Manifest)));
        let m = parse_manifest(DOCKER_MANIFEST.as_bytes()).expect("parses");
        assert_eq!(m.media_type(), &Some(MediaType::ImageManifest));
        assert_eq!(m.config().media_type(), &MediaType::ImageConfig);
        assert_eq!(m.layers()[0].media_type(), &MediaType::ImageLayerGzip);
        assert_eq!(m.layers()[1].media_type(), &MediaType::ImageLayerNonDistributableGzip);
        assert_eq!(m.layers()[0].size(), 2_220_094);
    }

    #[test]
    fn recognises_documents_without_media_type() {
        assert_eq!(detect(br#"{"schemaVersion":2,"manifests":[]}"#), Ok((media::OCI_INDEX.to_owned(), Kind::Index)));
        assert_eq!(
            detect(br#"{"schemaVersion":2,"config":{},"layers":[]}"#),
            Ok((media::OCI_MANIFEST.to_owned(), Kind::Manifest))
        );
        assert!(matches!(detect(br#"{"schemaVersion":1,"fsLayers":[]}"#), Err(Unusable::Unsupported { .. })));
        assert!(matches!(detect(b"<html>"), Err(Unusable::Invalid(_))));
        assert!(matches!(
            detect(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#),
            Err(Unusable::Unsupported { .. })
        ));
    }

    fn entry(digest_char: char, platform: &str) -> String {
        let mut parts = platform.split('/');
        let os = parts.next().unwrap_or_default();
        let arch = parts.next().unwrap_or_default();
        let variant = parts.next().map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
        format!(
            r#"{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"sha256:{}","platform":{{"os":"{os}","architecture":"{arch}"{variant}}}}}"#,
            digest_char.to_string().repeat(64)
        )
    }

    #[test]
    fn picks_linux_amd64() {
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{},{},{},{}]}}"#,
            entry('a', "linux/arm64/v8"),
            entry('b', "linux/amd64/v3"),
            entry('c', "linux/amd64"),
            entry('d', "unknown/unknown"),
        );
        let amd64 = Platform::legacy();
        let chosen = select(list.as_bytes(), &amd64).expect("valid").expect("has amd64");
        assert_eq!(chosen.digest().to_string(), format!("sha256:{}", "c".repeat(64)));

        let list = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{},{}]}}"#,
            entry('a', "linux/arm64/v8"),
            entry('b', "windows/amd64"),
            entry('d', "unknown/unknown"),
        );
        let available = select(list.as_bytes(), &amd64).expect("valid").expect_err("no amd64");
        assert_eq!(available, "linux/arm64, windows/amd64");
        let arm64: Platform = "linux/aarch64".parse().expect("platform");
        let chosen = select(list.as_bytes(), &arm64).expect("valid").expect("has arm64/v8");
        assert_eq!(chosen.digest().to_string(), format!("sha256:{}", "a".repeat(64)));
    }

    #[test]
    fn falls_back_in_containerd_order() {
        let list = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{},{}]}}"#,
            entry('a', "linux/arm/v5"),
            entry('b', "linux/arm/v6"),
            entry('c', "linux/amd64/v2"),
        );
        let pick = |p: &str| {
            let wanted: Platform = p.parse().expect("platform");
            select(list.as_bytes(), &wanted).expect("valid").map(|d| d.digest().to_string()[7..8].to_owned())
        };
        assert_eq!(pick("linux/arm"), Ok("b".to_owned()));
        assert_eq!(pick("linux/arm64"), Ok("b".to_owned()));
        assert_eq!(pick("linux/amd64/v3"), Ok("c".to_owned()));
        assert_eq!(pick("linux/amd64"), Err("linux/amd64/v2, linux/arm/v5, linux/arm/v6".to_owned()));
    }

    #[test]
    fn config_platform_is_checked() {
        let config = |arch: &str| -> ImageConfiguration {
            serde_json::from_str(&format!(
                r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
            ))
            .expect("config")
        };
        let amd64 = Platform::legacy();
        assert_eq!(check_config_platform(&config("amd64"), &amd64), Ok(()));
        assert_eq!(check_config_platform(&config(""), &amd64), Ok(()));
        let err = check_config_platform(&config("arm64"), &amd64).expect_err("arm64 is not amd64");
        assert_eq!(err.to_string(), "linux/arm64");
        assert_eq!(check_config_platform(&config("aarch64"), &"linux/arm64/v8".parse().expect("p")), Ok(()));
    }

    #[test]
    fn docker_configs_deserialize() {
        let config = r#"{"architecture":"amd64","config":{"Hostname":"","Env":["PATH=/bin"],"Cmd":["sh"],
            "Entrypoint":null,"OnBuild":null,"Volumes":null,"ExposedPorts":{"80/tcp":{}},"Labels":null},
            "container":"abc","container_config":{"Cmd":["/bin/sh"]},"created":"2023-01-01T00:00:00Z",
            "docker_version":"20.10.7","history":[{"created":"2023-01-01T00:00:00Z","created_by":"ADD file"}],
            "os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:3d2430473443f0a9b2a8e2a1d5b5d7a9f0f4e6a6b2c0e6b0f5d4b3a2c1d0e9f8"]}}"#;
        let parsed: oci_spec::image::ImageConfiguration = serde_json::from_str(config).expect("parses");
        assert_eq!(parsed.rootfs().diff_ids().len(), 1);
        let cfg = parsed.config().as_ref().expect("config");
        assert_eq!(cfg.exposed_ports().as_deref(), Some(&["80/tcp".to_owned()][..]));
        assert_eq!(cfg.cmd().as_deref(), Some(&["sh".to_owned()][..]));
    }
}
