//! CRI ImageService over [`crate::image`].

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest,
    ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use tonic::{Request, Response, Status};

use crate::image::puller::{PullError, Puller};
use crate::image::registry::Credentials;
use crate::image::store::ImageRecord;

pub struct ImageServiceImpl {
    puller: Arc<Puller>,
}

impl ImageServiceImpl {
    pub fn new(puller: Arc<Puller>) -> Self {
        ImageServiceImpl { puller }
    }
}

fn to_cri(rec: &ImageRecord) -> Image {
    let (uid, username) = rec.user();
    Image {
        id: rec.id.to_string(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        size: rec.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: Some(ImageSpec {
            image: rec.id.to_string(),
            ..Default::default()
        }),
        pinned: rec.pinned,
    }
}

/// The CRI AuthConfig as the registry client's credentials. `auth` is base64
/// `user:password`, as in a docker config.json.
fn credentials(auth: Option<AuthConfig>) -> Result<Credentials, Status> {
    let Some(a) = auth else {
        return Ok(Credentials::Anonymous);
    };
    if !a.registry_token.is_empty() {
        return Ok(Credentials::RegistryToken(a.registry_token));
    }
    if !a.identity_token.is_empty() {
        return Ok(Credentials::IdentityToken(a.identity_token));
    }
    if !a.username.is_empty() {
        return Ok(Credentials::Basic {
            username: a.username,
            password: a.password,
        });
    }
    if !a.auth.is_empty() {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of user:password"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth must decode to user:password"))?;
        return Ok(Credentials::Basic {
            username: username.into(),
            password: password.into(),
        });
    }
    Ok(Credentials::Anonymous)
}

fn pull_status(e: PullError) -> Status {
    match e {
        PullError::Reference(_) => Status::invalid_argument(e.to_string()),
        PullError::Registry(crate::image::registry::RegistryError::Unauthorized { .. }, _) => {
            Status::permission_denied(e.to_string())
        }
        PullError::Unreachable { .. } => Status::not_found(e.to_string()),
        _ => Status::unknown(e.to_string()),
    }
}

fn image_name(spec: Option<ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("image spec with a non-empty image is required"))
}

#[tonic::async_trait]
impl ImageService for ImageServiceImpl {
    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let store = self.puller.store();
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(name) => store.resolve(&name).iter().map(to_cri).collect(),
            None => store.list().iter().map(to_cri).collect(),
        };
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let name = image_name(req.into_inner().image)?;
        // A missing image is not an error in CRI: the response just has no image.
        let image = self.puller.store().resolve(&name).as_ref().map(to_cri);
        Ok(Response::new(ImageStatusResponse {
            image,
            info: Default::default(),
        }))
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image)?;
        let creds = credentials(req.auth)?;
        let started = std::time::Instant::now();
        let rec = self.puller.pull(&name, &creds).await.map_err(pull_status)?;
        tracing::info!(image = %name, id = %rec.id, elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
        Ok(Response::new(PullImageResponse {
            image_ref: rec.id.to_string(),
        }))
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let name = image_name(req.into_inner().image)?;
        let store = self.puller.store();
        if let Some(rec) = store.resolve(&name) {
            store
                .remove(&rec.id)
                .map_err(|e| Status::internal(format!("removing {name}: {e}")))?;
        }
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let store = self.puller.store().clone();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || store.usage())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64;
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp: now,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: self.puller.store().root().display().to_string(),
                }),
                used_bytes: Some(UInt64Value { value: bytes }),
                inodes_used: Some(UInt64Value { value: inodes }),
            }],
            container_filesystems: vec![],
        }))
    }
}
