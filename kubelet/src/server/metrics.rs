//! `/metrics/resource` (upstream's resource metrics, from the same numbers as
//! `/stats/summary`) and `/metrics` (a few kubelet gauges under upstream names), in
//! the Prometheus text format.

use std::fmt::Write;

use chrono::DateTime;
use http::Response;
use k8s_cri::v1 as cri;

use super::Context;
use super::response::{self, Body};
use super::summary::{CpuStats, MemoryStats, Summary};

/// Builds a Prometheus text page, one metric family at a time.
#[derive(Default)]
struct Page {
    text: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} [ALPHA] {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// `labels` as `(name, value)`; `timestamp_ms` as upstream stamps resource metrics.
    fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        timestamp_ms: Option<i64>,
    ) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let rendered: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", rendered.join(","));
        }
        let _ = write!(self.text, " {value}");
        if let Some(ts) = timestamp_ms {
            let _ = write!(self.text, " {ts}");
        }
        self.text.push('\n');
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn millis(time: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn cpu_seconds(cpu: &CpuStats) -> Option<(f64, Option<i64>)> {
    cpu.usage_core_nano_seconds
        .map(|n| (n as f64 / 1e9, millis(&cpu.time)))
}

fn working_set(memory: &MemoryStats) -> Option<(f64, Option<i64>)> {
    memory
        .working_set_bytes
        .map(|b| (b as f64, millis(&memory.time)))
}

pub async fn resource(context: &Context) -> Response<Body> {
    let summary = context.stats.summary(context).await;
    if let Err(e) = &summary {
        tracing::warn!(error = %format!("{e:#}"), "collecting resource metrics");
    }
    response::prometheus(render_resource(summary.as_ref().ok()))
}

/// Families in upstream's (alphabetical) order; `None` renders `scrape_error 1`.
fn render_resource(summary: Option<&Summary>) -> String {
    let mut page = Page::default();
    let pods = summary.map(|s| s.pods.as_slice()).unwrap_or_default();
    type Reading = fn(&CpuStats, &MemoryStats) -> Option<(f64, Option<i64>)>;
    let cpu: Reading = |c, _| cpu_seconds(c);
    let memory: Reading = |_, m| working_set(m);
    let families: [(&str, &str, &str, Reading); 2] = [
        (
            "cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the {} in core-seconds",
            cpu,
        ),
        (
            "memory_working_set_bytes",
            "gauge",
            "Current working set of the {} in bytes",
            memory,
        ),
    ];
    for (suffix, kind, help, read) in families {
        let name = format!("container_{suffix}");
        page.family(&name, kind, &help.replace("{}", "container"));
        for pod in pods {
            let (ns, pod_name) = (pod.pod_ref.namespace.as_str(), pod.pod_ref.name.as_str());
            for c in &pod.containers {
                if let Some((v, ts)) = read(&c.cpu, &c.memory) {
                    let labels = [
                        ("container", c.name.as_str()),
                        ("namespace", ns),
                        ("pod", pod_name),
                    ];
                    page.sample(&name, &labels, v, ts);
                }
            }
        }
    }
    for (suffix, kind, help, read) in families {
        let name = format!("node_{suffix}");
        page.family(&name, kind, &help.replace("{}", "node"));
        if let Some((v, ts)) = summary.and_then(|s| read(&s.node.cpu, &s.node.memory)) {
            page.sample(&name, &[], v, ts);
        }
    }
    for (suffix, kind, help, read) in families {
        let name = format!("pod_{suffix}");
        page.family(&name, kind, &help.replace("{}", "pod"));
        for pod in pods {
            if let Some((v, ts)) = read(&pod.cpu, &pod.memory) {
                let labels = [
                    ("namespace", pod.pod_ref.namespace.as_str()),
                    ("pod", pod.pod_ref.name.as_str()),
                ];
                page.sample(&name, &labels, v, ts);
            }
        }
    }
    page.family(
        "scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
    );
    page.sample(
        "scrape_error",
        &[],
        if summary.is_some() { 0.0 } else { 1.0 },
        None,
    );
    page.text
}

/// `/metrics`: the node name, running pods (ready sandboxes) and containers by state.
pub async fn kubelet(context: &Context) -> Response<Body> {
    let mut runtime = context.cri.runtime_client();
    let sandboxes = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    let containers = runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .map(|r| r.into_inner().containers)
        .unwrap_or_default();
    let mut page = Page::default();
    page.family(
        "kubelet_node_name",
        "gauge",
        "The node's name. The count is always 1.",
    );
    page.sample(
        "kubelet_node_name",
        &[("node", &context.node_name)],
        1.0,
        None,
    );
    page.family(
        "kubelet_running_containers",
        "gauge",
        "Number of containers currently running",
    );
    for (state, label) in [
        (cri::ContainerState::ContainerCreated, "created"),
        (cri::ContainerState::ContainerExited, "exited"),
        (cri::ContainerState::ContainerRunning, "running"),
        (cri::ContainerState::ContainerUnknown, "unknown"),
    ] {
        let count = containers
            .iter()
            .filter(|c| c.state == state as i32)
            .count();
        if count > 0 {
            page.sample(
                "kubelet_running_containers",
                &[("container_state", label)],
                count as f64,
                None,
            );
        }
    }
    page.family(
        "kubelet_running_pods",
        "gauge",
        "Number of pods currently running",
    );
    let ready = sandboxes
        .iter()
        .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        .count();
    page.sample("kubelet_running_pods", &[], ready as f64, None);
    response::prometheus(page.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_scrape_says_so() {
        let text = render_resource(None);
        assert!(text.contains("# TYPE node_cpu_usage_seconds_total counter\n"));
        assert!(text.ends_with("scrape_error 1\n"), "{text}");
    }

    #[test]
    fn labels_are_escaped() {
        let mut p = Page::default();
        p.sample("m", &[("a", "x\"y")], 1.5, Some(7));
        assert_eq!(p.text, "m{a=\"x\\\"y\"} 1.5 7\n");
    }
}
