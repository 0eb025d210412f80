//! runtime-shim's ImageService against the real local registry: pulls through mirrors,
//! status by tag/ID/digest, USER reporting, auth, digest verification, removal, and
//! that images survive a restart.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{
    AuthConfig, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest,
    RemoveImageRequest,
};
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs};
use tonic::transport::Channel;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const CRI_TOOLS: &str = "gcr.io/k8s-staging-cri-tools";

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(c: &mut ImageServiceClient<Channel>, image: &str) -> Result<String, tonic::Status> {
    pull_with(c, image, None).await
}

async fn pull_with(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    let r = c
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await?;
    Ok(r.into_inner().image_ref)
}

async fn status(c: &mut ImageServiceClient<Channel>, image: &str) -> Option<k8s_cri::v1::Image> {
    c.image_status(ImageStatusRequest {
        image: spec(image),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .image
}

fn layer_dirs(dirs: &ShimDirs) -> usize {
    std::fs::read_dir(dirs.root().join("images/layers"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_through_mirrors_and_finds_images_by_tag_id_and_digest() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut c = shim.images().await.unwrap();

    let id = pull(&mut c, BUSYBOX).await.unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    let img = status(&mut c, BUSYBOX)
        .await
        .expect("pulled image has a status");
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![BUSYBOX.to_string()]);
    let digest = img.repo_digests[0].clone();
    assert!(
        digest.starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"),
        "{digest}"
    );
    assert!(img.size > 100_000, "busybox is not {} bytes", img.size);
    assert_eq!(status(&mut c, &id).await.unwrap().id, id);
    assert_eq!(status(&mut c, &id[7..19]).await.unwrap().id, id);
    assert_eq!(status(&mut c, &digest).await.unwrap().id, id);
    assert!(status(&mut c, "registry.k8s.io/nothere:1").await.is_none());

    // One of the unpacked layers holds a real busybox.
    let layers: Vec<_> = std::fs::read_dir(dirs.root().join("images/layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        layers.iter().any(|l| l.join("bin/busybox").is_file()),
        "{layers:?}"
    );

    // Docker Hub short names go through the docker.io mirror and resolve back.
    let hub = pull(&mut c, "busybox").await.unwrap();
    assert_eq!(
        status(&mut c, "docker.io/library/busybox:latest")
            .await
            .unwrap()
            .id,
        hub
    );
    assert_eq!(status(&mut c, "busybox").await.unwrap().id, hub);

    let list = c
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(list.iter().any(|i| i.id == id));
}

#[tokio::test(flavor = "multi_thread")]
async fn image_user_and_shared_tags_are_reported() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut c = shim.images().await.unwrap();
    for (image, uid, username) in [
        ("test-image-user-uid", Some(1002), ""),
        ("test-image-user-username", None, "www-data"),
        ("test-image-user-uid-group", Some(1003), ""),
        ("test-image-user-username-group", None, "www-data"),
    ] {
        let name = format!("{CRI_TOOLS}/{image}:latest");
        pull(&mut c, &name).await.unwrap();
        let img = status(&mut c, &name).await.unwrap();
        assert_eq!(img.uid.map(|u| u.value), uid, "{image}");
        assert_eq!(img.username, username, "{image}");
    }
    let mut ids = vec![];
    for tag in 1..=3 {
        ids.push(
            pull(&mut c, &format!("{CRI_TOOLS}/test-image-tags:{tag}"))
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let img = status(&mut c, &ids[0]).await.unwrap();
    assert_eq!(img.repo_tags.len(), 3, "{:?}", img.repo_tags);
}

#[tokio::test(flavor = "multi_thread")]
async fn removal_frees_layers_and_images_survive_a_restart() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let id = {
        let shim = RuntimeShim::start(&dirs, &reg).unwrap();
        let mut c = shim.images().await.unwrap();
        pull(&mut c, BUSYBOX).await.unwrap()
    };
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut c = shim.images().await.unwrap();
    assert_eq!(
        status(&mut c, BUSYBOX).await.unwrap().id,
        id,
        "lost across restart"
    );
    assert!(layer_dirs(&dirs) > 0);
    c.remove_image(RemoveImageRequest {
        image: spec(BUSYBOX),
    })
    .await
    .unwrap();
    assert!(status(&mut c, BUSYBOX).await.is_none());
    assert_eq!(layer_dirs(&dirs), 0);
    // Removing again is not an error.
    c.remove_image(RemoveImageRequest {
        image: spec(BUSYBOX),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn private_registries_need_the_credentials_from_the_request() {
    let reg = Registry::start_with_basic_auth("puller", "s3cret").unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut c = shim.images().await.unwrap();
    let err = pull(&mut c, BUSYBOX).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("credentials"), "{err}");
    let wrong = AuthConfig {
        username: "puller".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull_with(&mut c, BUSYBOX, Some(wrong)).await.unwrap_err();
    assert!(err.message().contains("rejected"), "{err}");
    let right = AuthConfig {
        username: "puller".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    pull_with(&mut c, BUSYBOX, Some(right)).await.unwrap();
    // The docker config.json form: base64 of user:password.
    let encoded = AuthConfig {
        auth: "cHVsbGVyOnMzY3JldA==".into(),
        ..Default::default()
    };
    pull_with(&mut c, "registry.k8s.io/pause:3.10", Some(encoded))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn content_that_does_not_match_its_digest_is_refused_and_not_stored() {
    let reg = Registry::start().unwrap();
    // Corrupt every layer blob of the pause image in this registry's private storage.
    let blobs = std::path::Path::new(&reg_storage(&reg)).join("docker/registry/v2/blobs/sha256");
    let manifest = reqwest_like_get(&format!(
        "{}/v2/registry.k8s.io/pause/manifests/3.10",
        reg.url()
    ));
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap()["sha256:".len()..].to_string();
    let data = blobs.join(&layer[..2]).join(&layer).join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut c = shim.images().await.unwrap();
    let err = pull(&mut c, "registry.k8s.io/pause:3.10")
        .await
        .unwrap_err();
    assert!(err.message().contains("expected sha256:"), "{err}");
    assert!(status(&mut c, "registry.k8s.io/pause:3.10").await.is_none());
    assert_eq!(layer_dirs(&dirs), 0);
    let tmp = std::fs::read_dir(dirs.root().join("images/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "partial downloads left in tmp/");
    // A digest the registry does not have is "not found", not a hang or a crash.
    let missing = format!("registry.k8s.io/pause@sha256:{}", "0".repeat(64));
    let err = pull(&mut c, &missing).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    // Garbage in the request is an argument error.
    let err = pull(&mut c, "Not A Valid/Ref").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

fn reg_storage(reg: &Registry) -> String {
    format!("{}/storage", reg.dir().display())
}

fn reqwest_like_get(url: &str) -> String {
    node_tests::fixture::run_ok(std::process::Command::new("curl").args([
        "-sSf",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        url,
    ]))
    .unwrap()
}
