//! Images made local: taken from the store, or pulled and recorded there.

use super::{Engine, Event, Events, ExecError, FsResult, fs_result};
use crate::image::ImageConfig;
use crate::oci::Digest;
use crate::reference::ImageRef;
use crate::store::ImageRecord;

impl Engine {
    /// The image `image` names: from the store when it holds it whole (and
    /// `pull` is off, or the reference pins a digest), otherwise pulled and
    /// recorded in the store under its name. Returns its manifest digest and
    /// filesystem. Used for base images and by `bake run`.
    pub async fn local_image(
        &self,
        image: &ImageRef,
        pull: bool,
        events: &dyn Events,
    ) -> Result<(Digest, FsResult), ExecError> {
        if let Some(stored) = self.stored_image(image, pull)? {
            return Ok(stored);
        }
        let name = image.to_string();
        events.event(Event::Pulling { image: name.clone() });
        let pulled = self.registry.pull(image, &crate::registry::NoProgress).await?;
        let result = fs_result(&self.store, &pulled.manifest_digest)?;
        self.record_pulled(&name, &pulled, &result)?;
        events.event(Event::Pulled { image: name, digest: pulled.manifest_digest.to_string() });
        Ok((pulled.manifest_digest, result))
    }

    /// The image `image` names when the store holds it whole, and `pull` is
    /// off or the reference pins a digest.
    pub(super) fn stored_image(&self, image: &ImageRef, pull: bool) -> Result<Option<(Digest, FsResult)>, ExecError> {
        let store = &self.store;
        let pinned = image.digest.is_some();
        if (pinned || !pull)
            && let Some(record) = store.image(&image.to_string())?
            && image.digest.as_ref().is_none_or(|d| *d == record.manifest.to_string())
            && let Ok(result) = fs_result(store, &record.manifest)
            && result.layers.iter().all(|l| store.has_blob(&l.digest))
        {
            return Ok(Some((record.manifest, result)));
        }
        Ok(None)
    }

    /// Records a pulled image in the store under `name`.
    pub(super) fn record_pulled(
        &self,
        name: &str,
        pulled: &crate::registry::Pulled,
        result: &FsResult,
    ) -> Result<(), ExecError> {
        let store = &self.store;
        let size = store.blob_len(&pulled.manifest_digest).unwrap_or(0)
            + store.blob_len(&result.config).unwrap_or(0)
            + result.layers.iter().map(|l| l.size).sum::<u64>();
        let created = ImageConfig::from_json(&store.read_blob(&result.config)?)
            .ok()
            .and_then(|c| c.json().get("created").and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let record = ImageRecord {
            manifest: pulled.manifest_digest.clone(),
            media_type: pulled.media_type.clone(),
            size,
            uncompressed_size: 0,
            created,
        };
        store.set_image(name, &record)?;
        Ok(())
    }
}
