//! SLSA provenance: an in-toto v1 Statement about one image manifest with
//! a SLSA provenance v1 predicate. It records what the build read (the
//! build file and its digest, the args, the base images' digests, the
//! contexts' digests) and who built it (bake and its version), and no
//! clock: a timestamp appears only when `SOURCE_DATE_EPOCH` gives one, so
//! the same inputs give the same bytes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::oci::Digest;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What kind of build the predicate describes.
const BUILD_TYPE: &str = "urn:bake:build:v1";

/// What the build read and how it was asked, for [`statement`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The build file as diagnostics name it, and its text.
    pub build_files: Vec<(String, String)>,
    /// The args in force, by name (unset ones left out).
    pub args: BTreeMap<String, String>,
    /// The targets asked for.
    pub targets: Vec<String>,
    /// Base images: the reference as written and the manifest digest it
    /// resolved to.
    pub bases: BTreeMap<String, String>,
    /// Contexts read: their folder (relative to the build file) and the
    /// BLAKE3 digest of the files selected.
    pub contexts: BTreeMap<String, String>,
    /// `SOURCE_DATE_EPOCH`, when set (non-zero): the build's time.
    pub epoch: Option<String>,
}

/// The statement for the image `name` (its platform, if any) whose
/// manifest is `subject`.
pub fn statement(name: &str, platform: Option<&str>, subject: &Digest, inputs: &Inputs) -> Value {
    let sha256 = |text: &str| crate::oci::digest_of(text.as_bytes()).digest().to_owned();
    let mut dependencies = Vec::new();
    for (path, text) in &inputs.build_files {
        dependencies.push(json!({ "uri": format!("file:{path}"), "digest": { "sha256": sha256(text) } }));
    }
    for (reference, digest) in &inputs.bases {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        dependencies.push(json!({ "uri": format!("docker-image://{reference}"), "digest": { "sha256": hex } }));
    }
    for (folder, digest) in &inputs.contexts {
        dependencies.push(json!({ "uri": format!("context:{folder}"), "digest": { "blake3": digest } }));
    }
    let build_file =
        inputs.build_files.first().map(|(path, text)| json!({ "path": path, "digest": { "sha256": sha256(text) } }));
    let mut metadata = json!({});
    if let (Some(epoch), Some(map)) = (&inputs.epoch, metadata.as_object_mut()) {
        map.insert("startedOn".to_owned(), json!(epoch));
        map.insert("finishedOn".to_owned(), json!(epoch));
    }
    let version = env!("CARGO_PKG_VERSION");
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": name, "digest": { "sha256": subject.digest() } }],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "buildFile": build_file,
                    "args": inputs.args,
                    "targets": inputs.targets,
                    "platform": platform,
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": { "id": format!("urn:bake:builder:{version}"), "version": { "bake": version } },
                "metadata": metadata,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_names_the_subject_and_the_inputs() {
        let subject = crate::oci::digest_of(b"manifest");
        let inputs = Inputs {
            build_files: vec![("build.kdl".into(), "image \"app\" {}".into())],
            args: BTreeMap::from([("VERSION".into(), "1.2".into())]),
            bases: BTreeMap::from([("docker.io/library/debian:bookworm".into(), format!("{subject}"))]),
            ..Inputs::default()
        };
        let s = statement("app", Some("linux/arm64"), &subject, &inputs);
        assert_eq!(s["_type"], STATEMENT_TYPE);
        assert_eq!(s["subject"][0]["digest"]["sha256"], subject.digest());
        let predicate = &s["predicate"]["buildDefinition"];
        assert_eq!(predicate["externalParameters"]["args"]["VERSION"], "1.2");
        assert_eq!(predicate["resolvedDependencies"][1]["digest"]["sha256"], subject.digest());
        // No clock without SOURCE_DATE_EPOCH: the same inputs, the same bytes.
        assert_eq!(s["predicate"]["runDetails"]["metadata"], json!({}));
        assert_eq!(s, statement("app", Some("linux/arm64"), &subject, &inputs));
    }
}
