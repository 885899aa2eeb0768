//! What ember knows about a process before relabeling: its names from /proc
//! and the container, pod and systemd unit its cgroup path reveals.
//!
//! ## `service_name`
//!
//! Every process gets a `service_name` label, chosen by the first rule that
//! applies:
//!
//! 1. `systemd_unit` without its `.service` suffix (`nginx.service` →
//!    `nginx`, `getty@tty1.service` → `getty@tty1`), if that service is the
//!    innermost unit in the cgroup path: nothing below it is a `.scope`
//!    (session, app or container scope) or a container, and it is not a
//!    user's service manager (`user@1000.service`), which only groups a user's
//!    sessions and apps.
//! 2. `container-` and the first 12 hex digits of the container id (the form
//!    `docker ps` shows).
//! 3. `pod-` and the first 8 characters of the Kubernetes pod uid.
//! 4. `comm`.
//!
//! So a service that runs a container gets the container's name, and a
//! service inside a systemd-run container gets the service's name: the
//! innermost grouping wins.

use std::io;
use std::path::Path;

use super::relabel::Labels;

/// What /proc says about one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessMeta {
    /// Process id (the thread group id).
    pub pid: u32,
    /// The kernel's short task name (`/proc/PID/comm`, at most 15 bytes).
    pub comm: String,
    /// Path of the executable; empty for kernel threads or when unreadable.
    pub exe: String,
    /// The cgroup path [`parse_cgroup`] chose; empty when unknown.
    pub cgroup: String,
    /// Full 64-hex container id.
    pub container_id: Option<String>,
    /// Innermost systemd service, e.g. `nginx.service`.
    pub systemd_unit: Option<String>,
    /// Kubernetes pod uid, with dashes.
    pub pod_uid: Option<String>,
}

/// What a process's cgroup path reveals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The path the other fields were read from; empty when none was found.
    pub path: String,
    /// Full 64-hex container id.
    pub container_id: Option<String>,
    /// Innermost systemd service, e.g. `nginx.service`.
    pub systemd_unit: Option<String>,
    /// Kubernetes pod uid, with dashes.
    pub pod_uid: Option<String>,
}

/// Reads /proc/<pid>/{comm,exe (readlink),cgroup} under `proc_root` (normally
/// "/proc"; tests pass a temp dir).
///
/// Only a failure to read `comm` is an error: it is readable for as long as
/// the process exists, while `exe` is unreadable for kernel threads and
/// without ptrace rights, and `cgroup` may be absent in odd containers.
pub fn read_process_meta(proc_root: &Path, pid: u32) -> io::Result<ProcessMeta> {
    let dir = proc_root.join(pid.to_string());
    let comm = read_bounded(&dir.join("comm"), 64)?;
    let comm = String::from_utf8_lossy(&comm);
    let comm = comm.strip_suffix('\n').unwrap_or(&comm).to_string();
    let exe = match std::fs::read_link(dir.join("exe")) {
        // An executable replaced on disk (a package upgrade) reads as
        // "PATH (deleted)"; the label should not change because of that.
        Ok(p) => {
            let p = p.to_string_lossy();
            p.strip_suffix(" (deleted)").unwrap_or(&p).to_string()
        }
        Err(_) => String::new(),
    };
    let cgroup = match read_bounded(&dir.join("cgroup"), 64 << 10) {
        Ok(bytes) => parse_cgroup(&String::from_utf8_lossy(&bytes)),
        Err(_) => CgroupInfo::default(),
    };
    Ok(ProcessMeta {
        pid,
        comm,
        exe,
        cgroup: cgroup.path,
        container_id: cgroup.container_id,
        systemd_unit: cgroup.systemd_unit,
        pod_uid: cgroup.pod_uid,
    })
}

/// At most `max` bytes of a file (the kernel bounds these files; the bound
/// also holds for a `proc_root` that is not the kernel's).
fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Parses the text of /proc/PID/cgroup (v1 and v2 forms).
///
/// Of the `hierarchy-ID:controllers:path` lines, the path used is the first,
/// with the v2 line (`0::/...`) ahead of the v1 lines, that names a container
/// or pod; else the v2 path if it is not the root; else the first non-root
/// path; else the root. Looking for a container first matters on hybrid
/// hosts, where the v2 line can show the runtime's service while the v1 lines
/// show the container.
pub fn parse_cgroup(text: &str) -> CgroupInfo {
    let mut paths: Vec<(bool, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            // The kernel marks a removed v2 cgroup that still holds a zombie.
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            path.starts_with('/')
                .then_some((id == "0" && controllers.is_empty(), path))
        })
        .collect();
    // Stable, so v1 lines keep their order behind the v2 line.
    paths.sort_by_key(|(v2, _)| !v2);
    let path = paths
        .iter()
        .find(|(_, p)| container_id(p).is_some() || pod_uid(p).is_some())
        .or_else(|| paths.iter().find(|(_, p)| *p != "/"))
        .or_else(|| paths.first())
        .map_or("", |(_, p)| p);
    CgroupInfo {
        path: path.to_string(),
        container_id: container_id(path).map(str::to_string),
        systemd_unit: systemd_unit(path).map(str::to_string),
        pod_uid: pod_uid(path),
    }
}

/// The labels ember attaches to a process before relabeling.
///
/// Discovery labels, for relabel rules and removed after them:
/// `__meta_process_pid`, `__meta_process_comm`, `__meta_process_exe`,
/// `__meta_process_cgroup`, `__meta_process_container_id`,
/// `__meta_process_systemd_unit` and `__meta_kubernetes_pod_uid`. Visible
/// labels: `pid`, `comm`, `exe`, `node`, `cgroup`, `container_id`,
/// `systemd_unit`, `pod_uid` and `service_name` (see the module docs for its
/// rule). A label whose value is unknown (empty) is left out.
pub fn discovery_labels(meta: &ProcessMeta, node: &str) -> Labels {
    let mut labels = Labels::new();
    let mut put = |name: &str, value: &str| {
        if !value.is_empty() {
            labels.insert(name.to_string(), value.to_string());
        }
    };
    let pid = meta.pid.to_string();
    let container_id = meta.container_id.as_deref().unwrap_or("");
    let systemd_unit = meta.systemd_unit.as_deref().unwrap_or("");
    let pod_uid = meta.pod_uid.as_deref().unwrap_or("");

    put("__meta_process_pid", &pid);
    put("__meta_process_comm", &meta.comm);
    put("__meta_process_exe", &meta.exe);
    put("__meta_process_cgroup", &meta.cgroup);
    put("__meta_process_container_id", container_id);
    put("__meta_process_systemd_unit", systemd_unit);
    put("__meta_kubernetes_pod_uid", pod_uid);

    put("pid", &pid);
    put("comm", &meta.comm);
    put("exe", &meta.exe);
    put("node", node);
    put("cgroup", &meta.cgroup);
    put("container_id", container_id);
    put("systemd_unit", systemd_unit);
    put("pod_uid", pod_uid);
    put("service_name", &service_name(meta));
    labels
}

/// See the module docs for the rule.
fn service_name(meta: &ProcessMeta) -> String {
    if let Some(unit) = meta.systemd_unit.as_deref() {
        if !unit.starts_with("user@") && innermost_unit_is(&meta.cgroup, unit) {
            return unit.strip_suffix(".service").unwrap_or(unit).to_string();
        }
    }
    if let Some(id) = meta.container_id.as_deref() {
        return format!("container-{}", prefix(id, 12));
    }
    if let Some(uid) = meta.pod_uid.as_deref() {
        return format!("pod-{}", prefix(uid, 8));
    }
    meta.comm.clone()
}

fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Whether `unit` is the deepest unit or container in `cgroup`. A path that
/// names no unit at all (the meta was built by hand) does not contradict it.
fn innermost_unit_is(cgroup: &str, unit: &str) -> bool {
    cgroup
        .rsplit('/')
        .find(|c| {
            c.ends_with(".service") || c.ends_with(".scope") || component_container_id(c).is_some()
        })
        .is_none_or(|c| c == unit)
}

/// The container id of the innermost component that has one, so nested
/// containers (docker in docker, a container in a pod) give the inner one.
fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(component_container_id)
}

/// Runtimes name a container's cgroup `<id>` or `<prefix>-<id>[.scope]`
/// (`docker-`, `cri-containerd-`, `crio-`, `libpod-`, ...). Any prefix is
/// accepted so new runtimes work, except conmon's: `libpod-conmon-<id>` and
/// `crio-conmon-<id>` hold the container monitor, not the container.
fn component_container_id(component: &str) -> Option<&str> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = match name.rsplit_once('-') {
        Some((prefix, _)) if prefix == "conmon" || prefix.ends_with("-conmon") => return None,
        Some((_, id)) => id,
        None => name,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The pod uid from a `pod<uid>` component (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid>.slice` (systemd driver, which writes the uid's
/// dashes as underscores because systemd reserves `-` for nesting).
fn pod_uid(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".slice").unwrap_or(component);
        let raw = match name.strip_prefix("pod") {
            Some(rest) => rest,
            None => &name[name.rfind("-pod")? + 4..],
        };
        let uid = raw.replace('_', "-");
        is_pod_uid(&uid).then_some(uid)
    })
}

/// A UUID, or the 32 hex digits of a static (manifest) pod's hash uid.
fn is_pod_uid(s: &str) -> bool {
    let b = s.as_bytes();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    uuid || (b.len() == 32 && b.iter().all(u8::is_ascii_hexdigit))
}

/// The last `.service` component: under a user's manager
/// (`user@1000.service/app.slice/foo.service`) that is the app's own service.
fn systemd_unit(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find(|c| c.len() > ".service".len() && c.ends_with(".service"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";
    const ID2: &str = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970";
    const UID: &str = "0a6e4c38-2f1b-4b7e-9a0c-52c1d2e3f4a5";
    const UID_: &str = "0a6e4c38_2f1b_4b7e_9a0c_52c1d2e3f4a5";

    fn parsed(text: &str) -> CgroupInfo {
        parse_cgroup(text)
    }

    fn info(path: &str, cid: Option<&str>, unit: Option<&str>, pod: Option<&str>) -> CgroupInfo {
        CgroupInfo {
            path: path.to_string(),
            container_id: cid.map(str::to_string),
            systemd_unit: unit.map(str::to_string),
            pod_uid: pod.map(str::to_string),
        }
    }

    #[test]
    fn docker_cgroupfs_v1() {
        let text = format!(
            "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n3:cpu,cpuacct:/docker/{ID}\n\
             1:name=systemd:/docker/{ID}\n"
        );
        assert_eq!(
            parsed(&text),
            info(&format!("/docker/{ID}"), Some(ID), None, None)
        );
    }

    #[test]
    fn docker_bare_id_v1_debian() {
        let text = format!("10:net_prio:/{ID2}\n9:perf_event:/{ID2}\n");
        assert_eq!(parsed(&text).container_id.as_deref(), Some(ID2));
    }

    #[test]
    fn docker_systemd_driver_v1_and_v2() {
        let p = format!("/system.slice/docker-{ID}.scope");
        let v1 = format!("10:devices:{p}\n2:cpuacct,cpu:{p}\n1:name=systemd:{p}\n");
        assert_eq!(parsed(&v1), info(&p, Some(ID), None, None));
        let v2 = format!("0::{p}\n");
        assert_eq!(parsed(&v2), info(&p, Some(ID), None, None));
    }

    #[test]
    fn hybrid_prefers_the_line_with_the_container() {
        let text = format!(
            "12:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n\
             0::/system.slice/containerd.service\n"
        );
        assert_eq!(
            parsed(&text),
            info(&format!("/docker/{ID}"), Some(ID), None, None)
        );
    }

    #[test]
    fn v2_line_preferred_over_v1_lines() {
        let text = "12:pids:/user.slice/user-1000.slice\n\
                    1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n\
                    0::/system.slice/cron.service\n";
        assert_eq!(
            parsed(text),
            info(
                "/system.slice/cron.service",
                None,
                Some("cron.service"),
                None
            )
        );
    }

    #[test]
    fn v1_first_non_root_line_when_v2_is_root() {
        let text = "0::/\n5:cpuset:/\n4:memory:/system.slice/sshd.service\n\
                    1:name=systemd:/system.slice/other.service\n";
        assert_eq!(
            parsed(text),
            info(
                "/system.slice/sshd.service",
                None,
                Some("sshd.service"),
                None
            )
        );
    }

    #[test]
    fn kubernetes_cgroupfs_containerd() {
        let p = format!("/kubepods/burstable/pod{UID}/{ID}");
        let text = format!("11:cpuset:{p}\n4:memory:{p}\n1:name=systemd:{p}\n");
        assert_eq!(parsed(&text), info(&p, Some(ID), None, Some(UID)));
        // Guaranteed pods sit directly under /kubepods.
        let p = format!("/kubepods/pod{UID}/{ID}");
        assert_eq!(
            parsed(&format!("0::{p}")),
            info(&p, Some(ID), None, Some(UID))
        );
    }

    #[test]
    fn kubernetes_systemd_containerd_v2() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/\
             cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parsed(&format!("0::{p}\n")),
            info(&p, Some(ID), None, Some(UID))
        );
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(
            parsed(&format!("0::{p}\n")),
            info(&p, Some(ID), None, Some(UID))
        );
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/\
             cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parsed(&format!("0::{p}\n")),
            info(&p, Some(ID), None, Some(UID))
        );
    }

    #[test]
    fn kubernetes_pod_level_cgroup_without_container() {
        let p =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(
            parsed(&format!("0::{p}\n")),
            info(&p, None, None, Some(UID))
        );
    }

    #[test]
    fn kubernetes_static_pod_hash_uid() {
        let uid = "6a0c4b0fd1a1b5d2f1c3e0a5c4f6d8a9";
        let p = format!("/kubepods/burstable/pod{uid}/{ID}");
        assert_eq!(parsed(&format!("0::{p}")).pod_uid.as_deref(), Some(uid));
    }

    #[test]
    fn crio_forms() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
        );
        assert_eq!(
            parsed(&format!("0::{p}\n")),
            info(&p, Some(ID), None, Some(UID))
        );
        let p = format!("/kubepods/besteffort/pod{UID}/crio-{ID}");
        assert_eq!(
            parsed(&format!("9:memory:{p}\n")),
            info(&p, Some(ID), None, Some(UID))
        );
        // conmon monitors the container but is not it.
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/\
             crio-conmon-{ID}.scope"
        );
        assert_eq!(
            parsed(&format!("0::{p}\n")),
            info(&p, None, None, Some(UID))
        );
    }

    #[test]
    fn podman_forms() {
        let p = format!("/machine.slice/libpod-{ID}.scope/container");
        assert_eq!(parsed(&format!("0::{p}\n")), info(&p, Some(ID), None, None));
        let p = format!("/machine.slice/libpod-{ID}.scope");
        assert_eq!(
            parsed(&format!("0::{p}\n")).container_id.as_deref(),
            Some(ID)
        );
        let p = format!("/libpod_parent/libpod-{ID}");
        assert_eq!(
            parsed(&format!("4:memory:{p}\n")),
            info(&p, Some(ID), None, None)
        );
        let p = format!("/machine.slice/libpod-conmon-{ID}.scope");
        assert_eq!(parsed(&format!("0::{p}\n")), info(&p, None, None, None));
    }

    #[test]
    fn rootless_containers_under_a_user_manager() {
        let p = format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        );
        assert_eq!(
            parsed(&format!("0::{p}\n")),
            info(&p, Some(ID), Some("user@1000.service"), None)
        );
        let p =
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope");
        assert_eq!(
            parsed(&format!("0::{p}\n")).container_id.as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn nested_containers_give_the_inner_id() {
        let p = format!("/docker/{ID2}/docker/{ID}");
        assert_eq!(parsed(&format!("0::{p}")).container_id.as_deref(), Some(ID));
        let p = format!("/system.slice/docker-{ID2}.scope/system.slice/docker-{ID}.scope");
        assert_eq!(parsed(&format!("0::{p}")).container_id.as_deref(), Some(ID));
    }

    #[test]
    fn bare_hex_last_component() {
        let task = "1b2c3d4e5f60718293a4b5c6d7e8f901";
        let p = format!("/ecs/{task}/{ID}");
        assert_eq!(parsed(&format!("0::{p}")), info(&p, Some(ID), None, None));
        // 63 or 65 hex digits, or non-hex, are not ids.
        for bad in [&ID[1..], &format!("{ID}0")[..], &ID.replace('a', "g")[..]] {
            assert_eq!(
                parsed(&format!("0::/docker/{bad}")).container_id,
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            parsed("0::/system.slice/nginx.service\n")
                .systemd_unit
                .as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            parsed("0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n")
                .systemd_unit
                .as_deref(),
            Some("foo.service")
        );
        assert_eq!(
            parsed("0::/system.slice/system-getty.slice/getty@tty1.service\n")
                .systemd_unit
                .as_deref(),
            Some("getty@tty1.service")
        );
        assert_eq!(
            parsed("0::/user.slice/user-1000.slice/session-3.scope\n").systemd_unit,
            None
        );
        assert_eq!(parsed("0::/init.scope\n").systemd_unit, None);
        assert_eq!(parsed("0::/system.slice/.service\n").systemd_unit, None);
    }

    #[test]
    fn root_empty_and_malformed() {
        assert_eq!(parsed("0::/\n"), info("/", None, None, None));
        assert_eq!(parsed(""), CgroupInfo::default());
        assert_eq!(parsed("garbage\n\n1:cpu\n"), CgroupInfo::default());
        assert_eq!(parsed("1:cpu:relative\n"), CgroupInfo::default());
    }

    #[test]
    fn deleted_cgroup_suffix_is_ignored() {
        assert_eq!(
            parsed("0::/system.slice/nginx.service (deleted)\n"),
            info(
                "/system.slice/nginx.service",
                None,
                Some("nginx.service"),
                None
            )
        );
    }

    #[test]
    fn path_may_contain_colons() {
        assert_eq!(
            parsed("0::/system.slice/a:b.service\n").path,
            "/system.slice/a:b.service"
        );
    }

    fn meta(comm: &str, cgroup: &str) -> ProcessMeta {
        let c = parse_cgroup(&format!("0::{cgroup}\n"));
        ProcessMeta {
            pid: 4242,
            comm: comm.to_string(),
            exe: format!("/usr/bin/{comm}"),
            cgroup: c.path,
            container_id: c.container_id,
            systemd_unit: c.systemd_unit,
            pod_uid: c.pod_uid,
        }
    }

    fn service(comm: &str, cgroup: &str) -> String {
        discovery_labels(&meta(comm, cgroup), "n1")["service_name"].clone()
    }

    #[test]
    fn service_name_rule() {
        assert_eq!(service("nginx", "/system.slice/nginx.service"), "nginx");
        assert_eq!(
            service(
                "agetty",
                "/system.slice/system-getty.slice/getty@tty1.service"
            ),
            "getty@tty1"
        );
        assert_eq!(
            service(
                "foo",
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"
            ),
            "foo"
        );
        // The user manager itself and apps in scopes under it are not services.
        assert_eq!(
            service(
                "systemd",
                "/user.slice/user-1000.slice/user@1000.service/init.scope"
            ),
            "systemd"
        );
        assert_eq!(
            service(
                "firefox",
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-12.scope"
            ),
            "firefox"
        );
        assert_eq!(
            service("bash", "/user.slice/user-1000.slice/session-3.scope"),
            "bash"
        );
        assert_eq!(
            service("python3", &format!("/system.slice/docker-{ID}.scope")),
            "container-9ec39b91f3d7"
        );
        assert_eq!(
            service(
                "java",
                &format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope")
            ),
            "container-9ec39b91f3d7"
        );
        assert_eq!(
            service(
                "pause",
                &format!("/kubepods.slice/kubepods-pod{UID_}.slice")
            ),
            "pod-0a6e4c38"
        );
        // A container inside a service is named for the container; a service
        // inside a container is named for the service.
        assert_eq!(
            service("app", &format!("/system.slice/runner.service/docker/{ID}")),
            "container-9ec39b91f3d7"
        );
        assert_eq!(
            service(
                "nginx",
                &format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service")
            ),
            "nginx"
        );
        assert_eq!(service("kthreadd", "/"), "kthreadd");
    }

    #[test]
    fn discovery_labels_for_a_kubernetes_container() {
        let m = meta(
            "java",
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/\
                 cri-containerd-{ID}.scope"
            ),
        );
        let l = discovery_labels(&m, "node-a");
        let want: Labels = [
            ("__meta_process_pid", "4242"),
            ("__meta_process_comm", "java"),
            ("__meta_process_exe", "/usr/bin/java"),
            ("__meta_process_cgroup", m.cgroup.as_str()),
            ("__meta_process_container_id", ID),
            ("__meta_kubernetes_pod_uid", UID),
            ("pid", "4242"),
            ("comm", "java"),
            ("exe", "/usr/bin/java"),
            ("node", "node-a"),
            ("cgroup", m.cgroup.as_str()),
            ("container_id", ID),
            ("pod_uid", UID),
            ("service_name", "container-9ec39b91f3d7"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(l, want);
    }

    #[test]
    fn discovery_labels_leave_out_unknowns() {
        let m = ProcessMeta {
            pid: 7,
            comm: "kworker/0:1".to_string(),
            ..Default::default()
        };
        let l = discovery_labels(&m, "");
        let names: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "__meta_process_comm",
                "__meta_process_pid",
                "comm",
                "pid",
                "service_name"
            ]
        );
        assert_eq!(l["service_name"], "kworker/0:1");
    }

    #[test]
    fn discovery_labels_feed_relabeling() {
        use super::super::relabel::{apply, Rule, RuleConfig};
        let cfg = RuleConfig {
            action: Some("labelkeep".to_string()),
            regex: Some("__.*|service_name|node".to_string()),
            ..Default::default()
        };
        let rules = [Rule::compile(&cfg, 1).unwrap()];
        let out = apply(
            &rules,
            &discovery_labels(&meta("nginx", "/system.slice/nginx.service"), "n1"),
        )
        .unwrap();
        let want: Labels = [("node", "n1"), ("service_name", "nginx")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(out, want);
    }

    /// A fake /proc under the temp dir, removed when dropped.
    struct FakeProc(std::path::PathBuf);

    impl FakeProc {
        fn new(name: &str) -> FakeProc {
            let root =
                std::env::temp_dir().join(format!("ember-meta-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            FakeProc(root)
        }

        fn process(&self, pid: u32, comm: Option<&[u8]>, exe: Option<&str>, cgroup: Option<&str>) {
            let dir = self.0.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(c) = comm {
                std::fs::write(dir.join("comm"), c).unwrap();
            }
            if let Some(e) = exe {
                std::os::unix::fs::symlink(e, dir.join("exe")).unwrap();
            }
            if let Some(c) = cgroup {
                std::fs::write(dir.join("cgroup"), c).unwrap();
            }
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_a_fake_proc_tree() {
        let fake = FakeProc::new("tree");
        let cgroup = format!("0::/system.slice/docker-{ID}.scope\n");
        // The link target need not exist: readlink reads the link itself.
        fake.process(
            1234,
            Some(b"my worker\n"),
            Some("/usr/local/bin/worker"),
            Some(&cgroup),
        );
        let m = read_process_meta(&fake.0, 1234).unwrap();
        assert_eq!(
            m,
            ProcessMeta {
                pid: 1234,
                comm: "my worker".to_string(),
                exe: "/usr/local/bin/worker".to_string(),
                cgroup: format!("/system.slice/docker-{ID}.scope"),
                container_id: Some(ID.to_string()),
                systemd_unit: None,
                pod_uid: None,
            }
        );
    }

    #[test]
    fn reads_upgraded_exe_and_systemd_unit() {
        let fake = FakeProc::new("deleted");
        fake.process(
            80,
            Some(b"nginx\n"),
            Some("/usr/sbin/nginx (deleted)"),
            Some("0::/system.slice/nginx.service\n"),
        );
        let m = read_process_meta(&fake.0, 80).unwrap();
        assert_eq!(m.exe, "/usr/sbin/nginx");
        assert_eq!(m.systemd_unit.as_deref(), Some("nginx.service"));
    }

    #[test]
    fn kernel_thread_without_exe_or_cgroup() {
        let fake = FakeProc::new("kthread");
        fake.process(2, Some(b"kthreadd\n"), None, None);
        let m = read_process_meta(&fake.0, 2).unwrap();
        assert_eq!(
            m,
            ProcessMeta {
                pid: 2,
                comm: "kthreadd".to_string(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn invalid_utf8_comm_is_lossy() {
        let fake = FakeProc::new("utf8");
        fake.process(3, Some(b"ab\xffc\n"), None, Some("0::/\n"));
        let m = read_process_meta(&fake.0, 3).unwrap();
        assert_eq!(m.comm, "ab\u{fffd}c");
        assert_eq!(m.cgroup, "/");
    }

    #[test]
    fn missing_process_is_not_found() {
        let fake = FakeProc::new("missing");
        let err = read_process_meta(&fake.0, 99).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
