//! The image config document, built the way `docker build` builds it: the
//! base image's config, with each instruction of the stage chain applied in
//! order.
//!
//! The document is kept as JSON, not as oci-spec's struct, so that fields
//! oci-spec does not model (Docker's `Healthcheck`, `Shell`, `OnBuild`, ...)
//! survive inheritance from a base image, and so that serialising it through
//! [`crate::oci::canonical_json`] gives the same bytes on every machine.

use serde_json::{Map, Value, json};

use crate::lang::{HealthTest, InstructionKind};

/// An image config document (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    doc: Value,
}

impl ImageConfig {
    /// The config of an empty image for the host's platform.
    pub fn scratch() -> Self {
        Self::scratch_for(&crate::platform::Platform::host())
    }

    /// The config of an empty image for `platform`.
    pub fn scratch_for(platform: &crate::platform::Platform) -> Self {
        let mut doc = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [] },
            "history": [],
        });
        if !platform.variant.is_empty() {
            doc["variant"] = platform.variant.clone().into();
        }
        Self { doc }
    }

    /// Makes the config name `platform` (unchanged bytes when it already
    /// does).
    pub fn set_platform(&mut self, platform: &crate::platform::Platform) {
        let doc = object(&mut self.doc);
        doc.insert("architecture".into(), Value::String(platform.architecture.clone()));
        doc.insert("os".into(), Value::String(platform.os.clone()));
        if platform.variant.is_empty() {
            doc.remove("variant");
        } else {
            doc.insert("variant".into(), Value::String(platform.variant.clone()));
        }
    }

    /// The platform the config names (`None` without an architecture).
    pub fn platform(&self) -> Option<crate::platform::Platform> {
        let text = |k: &str| self.doc.get(k).and_then(Value::as_str).unwrap_or_default();
        let arch = text("architecture");
        (!arch.is_empty()).then(|| crate::platform::Platform::new(text("os"), arch, text("variant")))
    }

    /// A base image's config.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut doc: Value = serde_json::from_slice(bytes)?;
        if !doc.is_object() {
            doc = json!({});
        }
        let mut c = Self { doc };
        // Docker v2 configs carry a `container_config` of the build that made
        // them; it says nothing about this image.
        if let Some(o) = c.doc.as_object_mut() {
            o.remove("container_config");
            o.remove("container");
            o.remove("docker_version");
        }
        c.config_mut();
        Ok(c)
    }

    /// The document.
    pub fn json(&self) -> &Value {
        &self.doc
    }

    /// Canonical bytes (sorted keys).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::oci::canonical_json(&self.doc).unwrap_or_default()
    }

    fn config_mut(&mut self) -> &mut Map<String, Value> {
        let root = object(&mut self.doc);
        let config = root.entry("config").or_insert_with(|| json!({}));
        object(config)
    }

    fn config(&self) -> Option<&Map<String, Value>> {
        self.doc.get("config").and_then(Value::as_object)
    }

    /// Environment as `(name, value)` pairs, in order.
    pub fn env(&self) -> Vec<(String, String)> {
        self.config()
            .and_then(|c| c.get("Env"))
            .and_then(Value::as_array)
            .map(|env| {
                env.iter()
                    .filter_map(Value::as_str)
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (kv.to_owned(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The working directory; `/` when unset.
    pub fn workdir(&self) -> String {
        match self.string("WorkingDir") {
            Some(w) if !w.is_empty() => w,
            _ => "/".to_owned(),
        }
    }

    /// The user, if set.
    pub fn user(&self) -> Option<String> {
        self.string("User").filter(|u| !u.is_empty())
    }

    /// The shell `run` uses: the stage's `shell`, else `/bin/sh -c`.
    pub fn shell(&self) -> Vec<String> {
        self.strings("Shell").filter(|s| !s.is_empty()).unwrap_or_else(|| vec!["/bin/sh".to_owned(), "-c".to_owned()])
    }

    pub fn entrypoint(&self) -> Option<Vec<String>> {
        self.strings("Entrypoint")
    }

    pub fn cmd(&self) -> Option<Vec<String>> {
        self.strings("Cmd")
    }

    pub fn stop_signal(&self) -> Option<String> {
        self.string("StopSignal")
    }

    fn string(&self, key: &str) -> Option<String> {
        self.config().and_then(|c| c.get(key)).and_then(Value::as_str).map(str::to_owned)
    }

    fn strings(&self, key: &str) -> Option<Vec<String>> {
        let list = self.config()?.get(key)?.as_array()?;
        Some(list.iter().filter_map(Value::as_str).map(str::to_owned).collect())
    }

    /// Applies one instruction, as `docker build` would. `copy` and `run`
    /// change no config field; their history is added by [`Self::add_layer`].
    pub fn apply(&mut self, kind: &InstructionKind) {
        match kind {
            InstructionKind::Workdir(w) => {
                let w = expand(w, &self.env());
                let dir = if w.starts_with('/') { w } else { format!("{}/{w}", self.workdir().trim_end_matches('/')) };
                self.config_mut().insert("WorkingDir".into(), Value::String(crate::lang::clean_absolute(&dir)));
            }
            InstructionKind::Env(k, v) => {
                let mut env = self.env();
                let value = expand(v, &env);
                match env.iter_mut().find(|(name, _)| name == k) {
                    Some(slot) => slot.1 = value,
                    None => env.push((k.clone(), value)),
                }
                let list = env.into_iter().map(|(k, v)| Value::String(format!("{k}={v}"))).collect();
                self.config_mut().insert("Env".into(), Value::Array(list));
            }
            InstructionKind::User(u) => {
                self.config_mut().insert("User".into(), Value::String(u.clone()));
            }
            InstructionKind::Expose(ports) => {
                let exposed = object(self.config_mut().entry("ExposedPorts").or_insert_with(|| json!({})));
                for p in ports {
                    exposed.insert(p.to_string(), json!({}));
                }
            }
            InstructionKind::Entrypoint(args) => {
                let c = self.config_mut();
                c.insert("Entrypoint".into(), strings(args));
                // A new entrypoint drops the base image's cmd, as in Docker.
                c.remove("Cmd");
            }
            InstructionKind::Cmd(args) => {
                self.config_mut().insert("Cmd".into(), strings(args));
            }
            InstructionKind::Label(k, v) => {
                let labels = object(self.config_mut().entry("Labels").or_insert_with(|| json!({})));
                labels.insert(k.clone(), Value::String(v.clone()));
            }
            InstructionKind::Volume(paths) => {
                let volumes = object(self.config_mut().entry("Volumes").or_insert_with(|| json!({})));
                for p in paths {
                    volumes.insert(p.clone(), json!({}));
                }
            }
            InstructionKind::StopSignal(s) => {
                self.config_mut().insert("StopSignal".into(), Value::String(s.clone()));
            }
            InstructionKind::Healthcheck(h) => {
                let test = match &h.test {
                    HealthTest::None => vec!["NONE".to_owned()],
                    HealthTest::Exec(args) => std::iter::once("CMD".to_owned()).chain(args.iter().cloned()).collect(),
                    HealthTest::Shell(s) => vec!["CMD-SHELL".to_owned(), s.clone()],
                };
                let mut hc = Map::new();
                hc.insert("Test".into(), strings(&test));
                for (name, v) in [
                    ("Interval", h.interval_ns),
                    ("Timeout", h.timeout_ns),
                    ("StartPeriod", h.start_period_ns),
                    ("StartInterval", h.start_interval_ns),
                ] {
                    if let Some(ns) = v {
                        hc.insert(name.into(), json!(ns));
                    }
                }
                if let Some(r) = h.retries {
                    hc.insert("Retries".into(), json!(r));
                }
                self.config_mut().insert("Healthcheck".into(), Value::Object(hc));
            }
            InstructionKind::Shell(args) => {
                self.config_mut().insert("Shell".into(), strings(args));
            }
            InstructionKind::OnBuild(trigger) => {
                let list = self.config_mut().entry("OnBuild").or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                if let Some(a) = list.as_array_mut() {
                    a.push(Value::String(trigger.clone()));
                }
            }
            InstructionKind::Author(author) => {
                object(&mut self.doc).insert("author".into(), Value::String(author.clone()));
            }
            InstructionKind::Copy(_) | InstructionKind::Run(_) => {}
        }
    }

    /// Records a layer: its diffID in `rootfs`, and a history entry.
    pub fn add_layer(&mut self, diff_id: &str, created: &str, created_by: &str) {
        let root = object(&mut self.doc);
        let rootfs = object(root.entry("rootfs").or_insert_with(|| json!({"type": "layers"})));
        rootfs.insert("type".into(), json!("layers"));
        let ids = rootfs.entry("diff_ids").or_insert_with(|| json!([]));
        if let Some(a) = ids.as_array_mut() {
            a.push(Value::String(diff_id.to_owned()));
        }
        self.history(created, created_by, false);
    }

    /// A history entry; `empty_layer` for instructions that add no layer.
    pub fn history(&mut self, created: &str, created_by: &str, empty_layer: bool) {
        let root = object(&mut self.doc);
        let history = root.entry("history").or_insert_with(|| json!([]));
        let mut h = Map::new();
        h.insert("created".into(), json!(created));
        h.insert("created_by".into(), json!(created_by));
        h.insert("comment".into(), json!("bake"));
        if empty_layer {
            h.insert("empty_layer".into(), json!(true));
        }
        if let Some(a) = history.as_array_mut() {
            a.push(Value::Object(h));
        }
    }

    /// Sets the image's creation time.
    pub fn set_created(&mut self, created: &str) {
        object(&mut self.doc).insert("created".into(), json!(created));
    }

    /// The diffIDs in `rootfs`.
    pub fn diff_ids(&self) -> Vec<String> {
        self.doc
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

fn object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

fn strings(args: &[String]) -> Value {
    Value::Array(args.iter().map(|a| Value::String(a.clone())).collect())
}

/// The OCI architecture name of this machine.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// `$NAME` and `${NAME}` from the environment so far, as Docker expands them
/// in `ENV` and `WORKDIR`; unknown names expand to nothing, `\$` is a `$`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1) == Some(&'$') => {
                out.push('$');
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'{') => match chars[i + 2..].iter().position(|&c| c == '}') {
                Some(end) => {
                    let name: String = chars[i + 2..i + 2 + end].iter().collect();
                    out.push_str(lookup(&name));
                    i += end + 3;
                }
                None => {
                    out.push('$');
                    i += 1;
                }
            },
            '$' if chars.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') => {
                let len = chars[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').count();
                let name: String = chars[i + 1..=i + len].iter().collect();
                out.push_str(lookup(&name));
                i += len + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::Port;

    #[test]
    fn env_expands_and_replaces_like_docker() {
        let mut c = ImageConfig::from_json(br#"{"config":{"Env":["PATH=/usr/bin:/bin"]}}"#).expect("json");
        c.apply(&InstructionKind::Env("PATH".into(), "/usr/local/go/bin:$PATH".into()));
        c.apply(&InstructionKind::Env("GOPATH".into(), "/go".into()));
        c.apply(&InstructionKind::Env("X".into(), "${GOPATH}/bin \\$HOME $NOPE".into()));
        assert_eq!(
            c.env(),
            [
                ("PATH".to_owned(), "/usr/local/go/bin:/usr/bin:/bin".to_owned()),
                ("GOPATH".to_owned(), "/go".to_owned()),
                ("X".to_owned(), "/go/bin $HOME ".to_owned()),
            ]
        );
    }

    #[test]
    fn entrypoint_resets_inherited_cmd_and_workdir_is_relative() {
        let mut c = ImageConfig::from_json(br#"{"config":{"Cmd":["bash"],"WorkingDir":"/src"},"container_config":{}}"#)
            .expect("json");
        assert!(c.json().get("container_config").is_none());
        c.apply(&InstructionKind::Entrypoint(vec!["/app".into()]));
        assert_eq!(c.cmd(), None);
        c.apply(&InstructionKind::Workdir("sub/../app".into()));
        assert_eq!(c.workdir(), "/src/app");
        c.apply(&InstructionKind::Expose(vec![Port { port: 8080, protocol: "tcp".into() }]));
        assert_eq!(c.json().pointer("/config/ExposedPorts/8080~1tcp"), Some(&json!({})));
    }

    #[test]
    fn bytes_are_canonical() {
        let mut a = ImageConfig::scratch();
        a.apply(&InstructionKind::Label("z".into(), "1".into()));
        a.apply(&InstructionKind::Label("a".into(), "2".into()));
        let text = String::from_utf8(a.to_bytes()).expect("utf8");
        assert!(text.find("\"a\"") < text.find("\"z\""), "{text}");
    }
}
