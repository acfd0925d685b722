//! `/proc/<pid>/cgroup` (man 7 cgroups): `hierarchy-ID:controller-list:cgroup-path` per line.
//! Sample (this machine, a process in a v1 blkio cgroup, hybrid v1 + v2 host):
//! ```text
//! 9:name=systemd:/
//! 7:blkio:/stallwatch-test-1234
//! 4:memory:/
//! 1:cpu:/
//! 0::/
//! ```
//! The path may contain `:` (it is everything after the second colon).

use crate::error::ParseError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy: u32,
    /// Controllers, e.g. `["cpu", "cpuacct"]`; empty for the v2 line.
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse(text: &str) -> Result<Vec<CgroupLine>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut it = line.splitn(3, ':');
        let (Some(h), Some(c), Some(p)) = (it.next(), it.next(), it.next()) else {
            return Err(ParseError::new(
                i + 1,
                format!("expected id:controllers:path, got {line:?}"),
            ));
        };
        let hierarchy = h
            .parse()
            .map_err(|_| ParseError::new(i + 1, format!("hierarchy id {h:?}")))?;
        let controllers = if c.is_empty() {
            Vec::new()
        } else {
            c.split(',').map(String::from).collect()
        };
        out.push(CgroupLine {
            hierarchy,
            controllers,
            path: p.to_string(),
        });
    }
    Ok(out)
}

/// The one path that best says where a process lives: the v2 path when it is not the root,
/// else the first non-root v1 path of the controllers containers always get (memory, cpu,
/// pids, blkio), else `/`.
pub fn primary_path(lines: &[CgroupLine]) -> &str {
    if let Some(l) = lines
        .iter()
        .find(|l| l.hierarchy == 0 && l.controllers.is_empty() && l.path != "/")
    {
        return &l.path;
    }
    for want in ["memory", "cpu", "pids", "blkio"] {
        if let Some(l) = lines
            .iter()
            .find(|l| l.path != "/" && l.controllers.iter().any(|c| c == want))
        {
            return &l.path;
        }
    }
    lines
        .iter()
        .map(|l| l.path.as_str())
        .find(|p| *p != "/")
        .unwrap_or("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_hybrid_host_v1_blkio() {
        let l = parse(
            "9:name=systemd:/\n7:blkio:/stallwatch-test-1\n4:memory:/\n1:cpu,cpuacct:/\n0::/\n",
        )
        .unwrap();
        assert_eq!(l.len(), 5);
        assert_eq!(l[3].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(primary_path(&l), "/stallwatch-test-1");
    }

    #[test]
    fn cgroup_pure_v2_docker_scope() {
        let l = parse("0::/system.slice/docker-0123abcd.scope\n").unwrap();
        assert_eq!(primary_path(&l), "/system.slice/docker-0123abcd.scope");
    }

    #[test]
    fn cgroup_path_with_colons_and_garbage() {
        let l = parse("3:memory:/a:b:c\n").unwrap();
        assert_eq!(l[0].path, "/a:b:c");
        assert!(parse("x:memory:/\n").is_err());
        assert!(parse("nonsense\n").is_err());
        assert_eq!(primary_path(&parse("0::/\n").unwrap()), "/");
    }
}
