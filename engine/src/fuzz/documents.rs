//! The `manifest` fuzz target: arbitrary bytes through every function bake
//! decodes registry documents with (manifests, indexes, image configs), as a
//! pull does, checking what they return.

use oci_spec::image::{ImageConfiguration, MediaType};

use crate::image::ImageConfig;
use crate::oci::media;
use crate::registry::manifest::{Kind, detect, parse_manifest, select};

/// Decodes `data` as a manifest, an index and an image config. Panics when a
/// decoder breaks a promise; errors are fine.
pub fn manifest(data: &[u8]) {
    if let Ok((media_type, kind)) = detect(data) {
        let expected = match kind {
            Kind::Index => [media::OCI_INDEX, media::DOCKER_MANIFEST_LIST],
            Kind::Manifest => [media::OCI_MANIFEST, media::DOCKER_MANIFEST],
        };
        assert!(expected.contains(&media_type.as_str()), "{media_type} detected as {kind:?}");
    }
    if let Ok(Ok(chosen)) = select(data, &crate::platform::Platform::legacy()) {
        let chosen = chosen.media_type().to_string();
        let usable = [media::OCI_MANIFEST, media::DOCKER_MANIFEST, media::OCI_INDEX, media::DOCKER_MANIFEST_LIST];
        assert!(usable.contains(&chosen.as_str()), "the index entry chosen is a {chosen}");
    }
    if let Ok(parsed) = parse_manifest(data) {
        assert_eq!(parsed.schema_version(), 2);
        assert_eq!(parsed.media_type(), &Some(MediaType::ImageManifest));
        // Docker media types bake knows become OCI's; unknown ones are kept,
        // for the pull to refuse by name.
        let known = [
            media::DOCKER_CONFIG,
            media::DOCKER_LAYER_GZIP,
            media::DOCKER_LAYER_FOREIGN,
            "application/vnd.docker.image.rootfs.diff.tar",
        ];
        let docker = |m: &MediaType| known.contains(&m.to_string().as_str());
        assert!(!docker(parsed.config().media_type()), "a Docker config media type survived");
        assert!(!parsed.layers().iter().any(|l| docker(l.media_type())), "a Docker layer media type survived");
        let _ = crate::oci::canonical_json(&parsed);
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfiguration>(data) {
        let _ = crate::oci::canonical_json(&config);
    }
    if let Ok(mut config) = ImageConfig::from_json(data) {
        let env = config.env();
        let _ = (config.workdir(), config.user(), config.shell(), config.entrypoint(), config.cmd());
        let _ = (config.stop_signal(), config.diff_ids());
        let _ = crate::image::expand("$HOME ${PATH} ${X:-y}", &env);
        let bytes = config.to_bytes();
        // The same base config gives the same bytes (and digest). A second
        // round through its own bytes may not: serde_json (without its
        // `float_roundtrip` feature) can read a float one ULP off, so a
        // number past u64 in an unknown field may shift once.
        let twice = ImageConfig::from_json(data).map(|c| c.to_bytes()).ok();
        assert_eq!(twice.as_ref(), Some(&bytes), "the same config gives other bytes");
        ImageConfig::from_json(&bytes).unwrap_or_else(|e| panic!("its own bytes do not parse: {e}"));
        config.add_layer("sha256:0", "1970-01-01T00:00:00Z", "fuzz");
        config.set_created("1970-01-01T00:00:00Z");
        let _ = config.to_bytes();
    }
    if let Some((_, layers)) = crate::image::manifest_parts(data) {
        for (_, _, media_type) in layers {
            let _ = media::layer_compression(&media_type);
        }
    }
}
