//! TEMPORARY STUB (replaced by the real module).
use super::relabel::Labels;
pub struct ProcessMeta { pub pid: u32, pub comm: String, pub exe: String, pub cgroup: String, pub container_id: Option<String>, pub systemd_unit: Option<String>, pub pod_uid: Option<String> }
pub fn read_process_meta(_root: &std::path::Path, pid: u32) -> std::io::Result<ProcessMeta> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?.trim().to_string();
    Ok(ProcessMeta { pid, comm, exe: String::new(), cgroup: String::new(), container_id: None, systemd_unit: None, pod_uid: None })
}
pub fn discovery_labels(m: &ProcessMeta, node: &str) -> Labels {
    let mut l = Labels::new();
    l.insert("pid".into(), m.pid.to_string());
    l.insert("comm".into(), m.comm.clone());
    l.insert("node".into(), node.into());
    l.insert("service_name".into(), m.comm.clone());
    l
}
