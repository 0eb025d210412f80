//! A container's `volumeMounts` as CRI mounts: subPath/subPathExpr resolved inside
//! the volume (never outside it, even through symlinks), readOnly, propagation.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::ReadyVolume;
use crate::pods::env::{EnvVars, expand};

/// Errors are the message of a `CreateContainerConfigError`.
pub fn container_mounts(
    volumes: &BTreeMap<String, ReadyVolume>,
    c: &Container,
    privileged: bool,
    env: &EnvVars,
) -> Result<Vec<cri::Mount>, String> {
    let mut out = vec![];
    for m in c.volume_mounts.iter().flatten() {
        let volume = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "cannot find volume \"{}\" to mount into container \"{}\"",
                m.name, c.name
            )
        })?;
        let host_path = match sub_path(m, env)? {
            Some(sub) => resolve_sub_path(&volume.host_path, &sub)?,
            None => volume.host_path.clone(),
        };
        let propagation = match m.mount_propagation.as_deref() {
            None | Some("None") => cri::MountPropagation::PropagationPrivate,
            Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") if privileged => cri::MountPropagation::PropagationBidirectional,
            Some("Bidirectional") => {
                return Err(
                    "Bidirectional mount propagation is available only to privileged containers"
                        .into(),
                );
            }
            Some(other) => return Err(format!("invalid propagation mode: {other}")),
        };
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host_path.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false) || volume.read_only,
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    Ok(out)
}

/// The subPath (or expanded subPathExpr) of a mount, validated as a relative path
/// without `..`.
fn sub_path(m: &VolumeMount, env: &EnvVars) -> Result<Option<String>, String> {
    let sub = match (&m.sub_path, &m.sub_path_expr) {
        (Some(p), _) if !p.is_empty() => p.clone(),
        (_, Some(expr)) if !expr.is_empty() => expand(expr, |name| env.get(name)),
        _ => return Ok(None),
    };
    let path = Path::new(&sub);
    if path.is_absolute() {
        return Err(format!("subPath {sub:?} must be a relative path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("subPath {sub:?} must not contain '..'"));
    }
    Ok(Some(sub))
}

/// `volume/sub`, created as a directory when missing (as upstream), refused when a
/// symlink makes it point outside the volume.
fn resolve_sub_path(volume: &Path, sub: &str) -> Result<PathBuf, String> {
    let joined = volume.join(sub);
    if std::fs::symlink_metadata(&joined).is_err() {
        std::fs::create_dir_all(&joined)
            .map_err(|e| format!("failed to create subPath directory for {sub:?}: {e}"))?;
    }
    let base = volume
        .canonicalize()
        .map_err(|e| format!("resolving volume path {}: {e}", volume.display()))?;
    let real = joined
        .canonicalize()
        .map_err(|e| format!("resolving subPath {sub:?}: {e}"))?;
    if !real.starts_with(&base) {
        return Err(format!(
            "subpath {:?} not within volume path {:?}",
            real.display().to_string(),
            base.display().to_string()
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(mounts: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", "volumeMounts": mounts})).unwrap()
    }

    #[test]
    fn sub_paths_stay_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("evil")).unwrap();
        let volumes = BTreeMap::from([(
            "v".to_string(),
            ReadyVolume {
                host_path: vol.clone(),
                read_only: true,
            },
        )]);
        let mut env = EnvVars::default();
        env.set("POD".into(), "p1".into());
        let ok = container(serde_json::json!([
            {"name": "v", "mountPath": "/a", "subPathExpr": "logs/$(POD)"},
            {"name": "v", "mountPath": "/b", "mountPropagation": "HostToContainer"}]));
        let m = container_mounts(&volumes, &ok, false, &env).unwrap();
        assert!(m[0].host_path.ends_with("vol/logs/p1"), "{m:?}");
        assert!(m[0].readonly, "API volumes are read-only");
        assert_eq!(
            m[1].propagation,
            cri::MountPropagation::PropagationHostToContainer as i32
        );
        for bad in [
            serde_json::json!([{"name": "v", "mountPath": "/a", "subPath": "../x"}]),
            serde_json::json!([{"name": "v", "mountPath": "/a", "subPath": "/etc"}]),
            serde_json::json!([{"name": "v", "mountPath": "/a", "subPath": "evil"}]),
            serde_json::json!([{"name": "nope", "mountPath": "/a"}]),
            serde_json::json!([{"name": "v", "mountPath": "/a", "mountPropagation": "Bidirectional"}]),
        ] {
            assert!(
                container_mounts(&volumes, &container(bad.clone()), false, &env).is_err(),
                "{bad}"
            );
        }
    }
}
