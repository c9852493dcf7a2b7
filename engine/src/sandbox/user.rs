//! `user "name:group"` resolved against the container's own `/etc/passwd`
//! and `/etc/group`, as runc's `GetExecUser` does (so as Docker does):
//!
//! - the user part matches a passwd entry by name or by uid; a number that
//!   matches nothing is used as is, with gid 0 and home `/`; a name that
//!   matches nothing is an error;
//! - an explicit group (name or number) sets the primary gid and no
//!   supplementary groups; without one the passwd entry's gid is primary and
//!   every group that lists the user's name is a supplementary group;
//! - no user at all means root (uid 0, which is then looked up like "0").

use serde::{Deserialize, Serialize};

/// Who a step runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExecUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
    pub(crate) home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(Passwd {
            name: f[0],
            uid: f[2].trim().parse().ok()?,
            gid: f[3].trim().parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = Group<'_>> {
    text.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f.get(3).map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).collect());
        Some(Group { name: f[0], gid: f[2].trim().parse().ok()?, members: members.unwrap_or_default() })
    })
}

/// Ids above this are refused, as runc does (they are reserved or invalid).
const MAX_ID: u32 = i32::MAX as u32 - 1;

fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Resolves `spec` against the contents of the container's `/etc/passwd` and
/// `/etc/group` (either may be missing). The error is a sentence.
pub(crate) fn resolve(spec: Option<&str>, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser, String> {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(format!("`{spec}` names no user"));
    }
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let matched = passwd_entries(passwd).find(|p| p.name == user_part || number(user_part) == Some(p.uid));
    let (uid, mut gid, home, name) = match (&matched, number(user_part)) {
        (Some(p), _) => (p.uid, p.gid, p.home.to_owned(), Some(p.name)),
        (None, Some(uid)) => (uid, 0, "/".to_owned(), None),
        (None, None) => return Err(format!("no user `{user_part}` in the image's /etc/passwd")),
    };
    if uid > MAX_ID {
        return Err(format!("uid {uid} is out of range"));
    }
    let mut groups = Vec::new();
    match group_part {
        Some(g) if !g.is_empty() => {
            gid = match group_entries(group).find(|e| e.name == g || number(g) == Some(e.gid)) {
                Some(e) => e.gid,
                None => number(g).ok_or_else(|| format!("no group `{g}` in the image's /etc/group"))?,
            };
        }
        Some(_) => return Err(format!("`{spec}` names no group after the colon")),
        None => {
            if let Some(name) = name {
                groups = group_entries(group).filter(|e| e.members.contains(&name)).map(|e| e.gid).collect();
            }
        }
    }
    if gid > MAX_ID {
        return Err(format!("gid {gid} is out of range"));
    }
    let home = if home.is_empty() { "/".to_owned() } else { home };
    Ok(ExecUser { uid, gid, groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # a comment\n\
                          daemon:x:1:1::/usr/sbin:/bin/false\n\
                          app:x:1000:1001:App:/home/app:/bin/sh\n\
                          broken line\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,app\nappgrp:x:1001:\nextra:x:2000:daemon, app\n";

    fn user(spec: Option<&str>) -> Result<ExecUser, String> {
        resolve(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn names_and_numbers() {
        let root = user(None).expect("root");
        assert_eq!(root, ExecUser { uid: 0, gid: 0, groups: vec![10], home: "/root".into() });
        let app = user(Some("app")).expect("app");
        assert_eq!(app, ExecUser { uid: 1000, gid: 1001, groups: vec![10, 2000], home: "/home/app".into() });
        // A uid that has an entry gets that entry's gid, home and groups.
        assert_eq!(user(Some("1000")).expect("1000"), app);
        // An unknown uid is used as is.
        let anon = user(Some("4242")).expect("4242");
        assert_eq!(anon, ExecUser { uid: 4242, gid: 0, groups: vec![], home: "/".into() });
    }

    #[test]
    fn explicit_groups() {
        let both = user(Some("1000:1000")).expect("numbers");
        assert_eq!(both, ExecUser { uid: 1000, gid: 1000, groups: vec![], home: "/home/app".into() });
        assert_eq!(user(Some("app:wheel")).expect("names").gid, 10);
        assert_eq!(user(Some("daemon:appgrp")).expect("names").gid, 1001);
    }

    #[test]
    fn mistakes() {
        assert!(user(Some("nobody")).expect_err("unknown").contains("no user `nobody`"));
        assert!(user(Some("app:nogroup")).expect_err("unknown").contains("no group `nogroup`"));
        assert!(user(Some(":0")).is_err());
        assert!(user(Some("app:")).is_err());
        assert!(user(Some("4294967295")).is_err());
        // No passwd file at all: numbers still work, names do not.
        assert_eq!(resolve(Some("5:6"), None, None).expect("numbers").uid, 5);
        assert!(resolve(Some("app"), None, None).is_err());
    }
}
