//! downwardAPI volumes: pod fields and container resources as files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::atomic_writer::Payload;
use super::keys::{self, DEFAULT_MODE};
use crate::pods::fieldpath::{self, PodAddresses};

/// Writes each item of a downwardAPI volume (or projection) into `payload`.
/// `allocatable` is the node's, the default of unset limits.
pub fn project(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    addr: PodAddresses<'_>,
    allocatable: &BTreeMap<String, Quantity>,
    payload: &mut Payload,
) -> Result<(), String> {
    let spec = pod.spec.clone().unwrap_or_default();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            fieldpath::pod_field(pod, &f.field_path, addr)?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.clone().unwrap_or_default();
            let container = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| c.name == name)
                .ok_or_else(|| format!("container {name:?} in resourceFieldRef not found"))?;
            fieldpath::container_resource(container, &r.resource, r.divisor.as_ref(), allocatable)?
        } else {
            continue;
        };
        let mode = item.mode.or(default_mode).unwrap_or(DEFAULT_MODE);
        keys::insert(payload, &item.path, value.as_bytes(), mode)?;
    }
    Ok(())
}

/// Whether any item needs the node's allocatable resources.
pub fn needs_allocatable(items: &[DownwardAPIVolumeFile]) -> bool {
    items.iter().any(|i| i.resource_field_ref.is_some())
}
