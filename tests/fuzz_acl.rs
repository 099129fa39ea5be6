//! Property-based fuzzing of the ACL scope matcher and the authorization
//! check (`scheduler::acl`).
//!
//! - `glob_match` agrees with a plain recursive reference matcher on
//!   arbitrary patterns and texts (stars, question marks, literals, and the
//!   characters job ids and owners use), never panics, and stays fast on
//!   patterns full of stars (the reference is only run on short inputs).
//! - A role covers a job exactly when every kind of glob it has matches;
//!   a scoped role never covers the cluster as a whole.
//! - `Subject::check` allows exactly what `Subject::allows` says and
//!   otherwise refuses with `PermissionDenied` naming the permission.
//!
//! Cases per test: `PROPTEST_CASES` (default 512); `tests/fuzz-campaign.sh`
//! runs long campaigns.

use kairos::error::Error;
use kairos::scheduler::acl::{glob_match, Permission, Resource, Role, Subject};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// The glob semantics, spelled out: `*` any run, `?` one character.
fn reference(pattern: &[char], text: &[char]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some('*'), _) => {
            reference(&pattern[1..], text) || (!text.is_empty() && reference(pattern, &text[1..]))
        }
        (Some(_), None) => false,
        (Some('?'), Some(_)) => reference(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) => p == t && reference(&pattern[1..], &text[1..]),
    }
}

fn pattern() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('*'), Just('?'), Just('a'), Just('b'), Just('-'), Just('é')],
        0..10,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('a'), Just('b'), Just('-'), Just('é'), Just('*')],
        0..12,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn permission() -> impl Strategy<Value = Permission> {
    proptest::sample::select(Permission::ALL.to_vec())
}

fn role() -> impl Strategy<Value = Role> {
    (
        proptest::collection::btree_set(permission(), 0..5),
        proptest::collection::vec(pattern(), 0..3),
        proptest::collection::vec(pattern(), 0..3),
    )
        .prop_map(|(permissions, owners, jobs)| Role {
            name: "r".into(),
            permissions,
            owners,
            jobs,
            types: vec![],
            topics: Vec::new(),
            description: String::new(),
            created_ms: 0,
            created_by: String::new(),
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn glob_match_agrees_with_the_reference(pattern in pattern(), text in text()) {
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
        prop_assert_eq!(glob_match(&pattern, &text), reference(&p, &t), "{:?} ~ {:?}", pattern, text);
    }

    #[test]
    fn glob_match_is_fast_on_long_inputs(stars in 1usize..200, len in 0usize..2_000) {
        let pattern = "*a".repeat(stars) + "b";
        let text = "a".repeat(len);
        prop_assert!(!glob_match(&pattern, &text));
    }

    #[test]
    fn a_role_covers_a_job_when_each_kind_of_glob_it_has_matches(role in role(), id in text(), owner in text()) {
        let owner_ok = role.owners.is_empty() || role.owners.iter().any(|g| glob_match(g, &owner));
        let job_ok = role.jobs.is_empty() || role.jobs.iter().any(|g| glob_match(g, &id));
        prop_assert_eq!(role.covers(&Resource::job(&id, &owner)), owner_ok && job_ok);
        let scoped = !role.owners.is_empty() || !role.jobs.is_empty();
        prop_assert_eq!(role.covers(&Resource::Cluster), !scoped);
    }

    #[test]
    fn check_allows_exactly_what_allows_says(
        roles in proptest::collection::vec(role(), 0..4),
        permission in permission(),
        id in text(),
        owner in text(),
    ) {
        let subject = Subject { principal: "p".into(), roles };
        let resource = Resource::job(&id, &owner);
        match subject.check(permission, &resource) {
            Ok(()) => prop_assert!(subject.allows(permission, &resource)),
            Err(Error::PermissionDenied(message)) => {
                prop_assert!(!subject.allows(permission, &resource));
                prop_assert!(message.contains(permission.as_str()), "{}", message);
            }
            Err(other) => prop_assert!(false, "unexpected refusal {:?}", other),
        }
    }
}
