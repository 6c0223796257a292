//! The conformance suite every [`MemoryStore`] must pass.
//!
//! A backend author runs it from a test:
//!
//! ```no_run
//! # async fn demo() {
//! let store = oba_memory::sqlite::SqliteStore::in_memory().await.unwrap();
//! oba_memory::conformance::run_all(&store).await;
//! # }
//! ```
//!
//! Each check panics with a message naming the check and the deviation. The checks use
//! fresh, unique tenant names and ids, so they can run on any store, with two
//! exceptions: [`expire_all_tenants`] needs a store holding no turns created before
//! unix ms 2 000 other than its own, and every check assumes nothing else writes into
//! its (unique) tenants meanwhile. Nothing depends on timing.
//!
//! What the suite pins down beyond the trait documentation:
//!
//! * `list` orders by `created_at` descending, then by `id` descending (byte order);
//!   `search` orders by score, best first; every score is finite and > 0.
//! * Search words are runs of Unicode alphanumerics; words match whole tokens
//!   case-insensitively (no prefix matching), any word suffices; a query without words
//!   returns nothing.
//! * [`Erased::memberships`] counts every membership row removed: the principal's own
//!   memberships plus the members of the spaces it owned. [`Erased::turns`] counts every
//!   turn removed (including other principals' turns in the spaces it owned).
//! * `set_member` on a missing space, with [`Right::Owner`], or naming the space's owner
//!   is [`StoreError::Invalid`]; `members` of a missing space is empty.
//! * Names, principals and sessions compare by bytes (`"user:Bob"` sorts before
//!   `"user:amy"`, and differs from `"user:bob"`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{
    Erased, Filter, Hit, Member, MemoryStore, Result, Right, Scope, Space, StoreError, Turn,
    MAX_LIMIT,
};

/// Timestamps of the suite's turns (unix ms, November 2023).
const BASE: i64 = 1_700_000_000_000;

/// Runs every check, in order.
pub async fn run_all<S: MemoryStore + ?Sized>(store: &S) {
    ping(store).await;
    tenants(store).await;
    round_trip(store).await;
    idempotent_append(store).await;
    scope_isolation(store).await;
    filters(store).await;
    limits(store).await;
    search_ranking(store).await;
    search_syntax(store).await;
    delete_own_only(store).await;
    delete_session_scope(store).await;
    erase_principal(store).await;
    expire_per_tenant(store).await;
    expire_all_tenants(store).await;
    spaces(store).await;
    members_and_rights(store).await;
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// A name no other run of the suite uses.
fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "conf-{tag}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[track_caller]
fn ok<T>(check: &str, what: &str, r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("memory conformance [{check}]: {what}: unexpected error: {e}"),
    }
}

#[track_caller]
fn expect_err<T: std::fmt::Debug>(
    check: &str,
    what: &str,
    r: Result<T>,
    want: fn(&StoreError) -> bool,
    want_name: &str,
) {
    match r {
        Err(e) if want(&e) => {}
        Err(e) => panic!("memory conformance [{check}]: {what}: expected {want_name}, got {e:?}"),
        Ok(v) => {
            panic!("memory conformance [{check}]: {what}: expected {want_name}, got Ok({v:?})")
        }
    }
}

fn is_invalid(e: &StoreError) -> bool {
    matches!(e, StoreError::Invalid(_))
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict(_))
}

#[track_caller]
fn check_eq<T: PartialEq + std::fmt::Debug>(check: &str, what: &str, got: T, want: T) {
    if got != want {
        panic!("memory conformance [{check}]: {what}:\n   got: {got:?}\n  want: {want:?}");
    }
}

#[track_caller]
fn check_true(check: &str, what: &str, cond: bool) {
    if !cond {
        panic!("memory conformance [{check}]: {what}");
    }
}

fn own(tenant: &str, principal: &str) -> Scope {
    Scope::Own {
        tenant: tenant.into(),
        principal: principal.into(),
    }
}

fn in_space(tenant: &str, space: &str) -> Scope {
    Scope::Space {
        tenant: tenant.into(),
        space: space.into(),
    }
}

fn all() -> Filter {
    Filter::default()
}

fn limit(n: usize) -> Filter {
    Filter {
        limit: n,
        ..Filter::default()
    }
}

fn turn(id: &str, tenant: &str, principal: &str, at: i64, user: &str, assistant: &str) -> Turn {
    Turn::new(id, tenant, principal, "/v1/chat/completions", at).with_text(user, assistant)
}

fn ids(turns: &[Turn]) -> Vec<String> {
    turns.iter().map(|t| t.id.clone()).collect()
}

fn hit_ids(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| h.turn.id.clone()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn owned(v: &[&String]) -> Vec<String> {
    v.iter().map(|s| (*s).clone()).collect()
}

/// Equal turns, embeddings compared bit for bit (so `-0.0` differs from `0.0`).
#[track_caller]
fn check_turn(check: &str, what: &str, got: &Turn, want: &Turn) {
    check_eq(check, what, got, want);
    let bits = |t: &Turn| {
        t.embedding
            .as_ref()
            .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
    };
    check_eq(
        check,
        &format!("{what} (embedding bits)"),
        bits(got),
        bits(want),
    );
}

#[track_caller]
fn check_turns(check: &str, what: &str, got: &[Turn], want: &[&Turn]) {
    check_eq(
        check,
        &format!("{what} (ids)"),
        ids(got),
        want.iter().map(|t| t.id.clone()).collect(),
    );
    for (g, w) in got.iter().zip(want) {
        check_turn(check, what, g, w);
    }
}

#[track_caller]
fn check_scores(check: &str, what: &str, hits: &[Hit]) {
    for h in hits {
        check_true(
            check,
            &format!(
                "{what}: score {} of {} is not finite and > 0",
                h.score, h.turn.id
            ),
            h.score.is_finite() && h.score > 0.0,
        );
    }
    for w in hits.windows(2) {
        check_true(
            check,
            &format!(
                "{what}: hits not best first ({} {} before {} {})",
                w[0].turn.id, w[0].score, w[1].turn.id, w[1].score
            ),
            w[0].score >= w[1].score,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Checks.

/// `ping` answers.
pub async fn ping<S: MemoryStore + ?Sized>(store: &S) {
    ok("ping", "ping", store.ping().await);
}

/// `tenants` lists each tenant that has turns, once, and forgets one whose turns expired.
pub async fn tenants<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "tenants";
    let (a, b) = (unique("ten-a"), unique("ten-b"));
    let turns = [
        turn(&unique("t1"), &a, "user:alice", BASE, "one", "1"),
        turn(&unique("t2"), &a, "user:bob", BASE, "two", "2"),
        turn(&unique("t3"), &b, "user:alice", BASE, "three", "3"),
    ];
    ok(C, "append", store.append(&turns).await);
    let listed = ok(C, "tenants", store.tenants().await);
    for t in [&a, &b] {
        assert_eq!(
            listed.iter().filter(|x| *x == t).count(),
            1,
            "{C}: tenant {t} listed once in {listed:?}"
        );
    }
    ok(C, "expire", store.expire(Some(&b), BASE + 1).await);
    let listed = ok(C, "tenants", store.tenants().await);
    assert!(listed.contains(&a), "{C}: {a} still has turns");
    assert!(
        !listed.contains(&b),
        "{C}: {b} has no turns left: {listed:?}"
    );
}

/// Every field comes back exactly: multi-byte text, `complete: false`, `None` versus
/// `Some` options, embeddings bit for bit (empty included).
pub async fn round_trip<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "round_trip";
    let tenant = unique("rt");
    let full = Turn {
        id: unique("rt-full"),
        tenant: tenant.clone(),
        principal: "user:alice".into(),
        session: Some("chat-1".into()),
        space: None,
        model: Some("gpt-4o-mini".into()),
        route: "/v1/chat/completions".into(),
        created_at: BASE + 3,
        user: "naïve 日本語 🎉 \"quoted\" 'single' back\\slash\nnew line\ttab".into(),
        assistant: "Ünïcödé — reply … 👩‍👩‍👧 %_ done".into(),
        complete: false,
        embedding: Some(vec![
            0.1,
            -0.0,
            1e-45,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            -1.0,
            std::f32::consts::PI,
            f32::INFINITY,
        ]),
    };
    let bare = Turn::new(
        &unique("rt-bare"),
        &tenant,
        "user:alice",
        "/api/chat",
        BASE + 2,
    );
    let spaced = Turn {
        session: Some("chat-1".into()),
        space: Some("room".into()),
        embedding: Some(Vec::new()),
        ..turn(
            &unique("rt-space"),
            &tenant,
            "user:alice",
            BASE + 1,
            "in the room",
            "yes",
        )
    };
    ok(
        C,
        "append",
        store
            .append(&[full.clone(), bare.clone(), spaced.clone()])
            .await,
    );

    let mine = ok(
        C,
        "list own",
        store.list(&own(&tenant, "user:alice"), &all()).await,
    );
    check_turns(C, "list own", &mine, &[&full, &bare]);
    let room = ok(
        C,
        "list space",
        store.list(&in_space(&tenant, "room"), &all()).await,
    );
    check_turns(C, "list space", &room, &[&spaced]);

    for word in ["naïve", "NAÏVE", "日本語", "Ünïcödé"] {
        let hits = ok(
            C,
            "search",
            store
                .search(&own(&tenant, "user:alice"), word, &all())
                .await,
        );
        check_eq(
            C,
            &format!("search {word:?} ids"),
            hit_ids(&hits),
            vec![full.id.clone()],
        );
        check_turn(C, &format!("search {word:?} turn"), &hits[0].turn, &full);
        check_scores(C, &format!("search {word:?}"), &hits);
    }
}

/// A turn whose id exists is ignored: the first version is kept, within a batch too.
pub async fn idempotent_append<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "idempotent_append";
    let tenant = unique("idem");
    let scope = own(&tenant, "user:alice");
    let id = unique("idem-1");
    let first = turn(&id, &tenant, "user:alice", BASE, "first version", "kept");
    ok(
        C,
        "append first",
        store.append(std::slice::from_ref(&first)).await,
    );
    ok(C, "append nothing", store.append(&[]).await);

    let mut second = turn(
        &id,
        &tenant,
        "user:alice",
        BASE + 50,
        "second version",
        "dropped",
    );
    second.session = Some("s".into());
    let other = turn(
        &unique("idem-2"),
        &tenant,
        "user:alice",
        BASE + 10,
        "other",
        "x",
    );
    ok(
        C,
        "append duplicate and new",
        store.append(&[second, other.clone()]).await,
    );
    let got = ok(C, "list", store.list(&scope, &all()).await);
    check_turns(C, "after re-append", &got, &[&other, &first]);
    let hits = ok(
        C,
        "search",
        store.search(&scope, "second dropped", &all()).await,
    );
    check_eq(C, "search for the dropped version", hit_ids(&hits), vec![]);

    let dup = unique("idem-3");
    let a = turn(&dup, &tenant, "user:alice", BASE + 20, "batch first", "a");
    let b = turn(&dup, &tenant, "user:alice", BASE + 30, "batch second", "b");
    ok(
        C,
        "append batch with a duplicate id",
        store.append(&[a.clone(), b]).await,
    );
    let got = ok(C, "list", store.list(&scope, &all()).await);
    check_turns(C, "duplicate within a batch", &got, &[&a, &other, &first]);
}

/// Principals, tenants and spaces never see each other's turns.
pub async fn scope_isolation<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "scope_isolation";
    let x = unique("iso-x");
    let y = unique("iso-y");
    let a_x = turn(
        &unique("iso"),
        &x,
        "user:alice",
        BASE + 1,
        "zebra crossing",
        "alpha",
    );
    let b_x = turn(
        &unique("iso"),
        &x,
        "user:bob",
        BASE + 2,
        "zebra crossing",
        "beta",
    );
    let a_y = turn(
        &unique("iso"),
        &y,
        "user:alice",
        BASE + 3,
        "zebra crossing",
        "gamma",
    );
    let a_team = Turn {
        space: Some("team".into()),
        ..turn(
            &unique("iso"),
            &x,
            "user:alice",
            BASE + 4,
            "zebra in team",
            "delta",
        )
    };
    let b_team = Turn {
        space: Some("team".into()),
        ..turn(
            &unique("iso"),
            &x,
            "user:bob",
            BASE + 5,
            "zebra bob team",
            "epsilon",
        )
    };
    let b_other = Turn {
        space: Some("other".into()),
        ..turn(
            &unique("iso"),
            &x,
            "user:bob",
            BASE + 6,
            "zebra other",
            "zeta",
        )
    };
    ok(
        C,
        "append",
        store
            .append(&[
                a_x.clone(),
                b_x.clone(),
                a_y.clone(),
                a_team.clone(),
                b_team.clone(),
                b_other.clone(),
            ])
            .await,
    );

    let cases: Vec<(&str, Scope, Vec<&Turn>)> = vec![
        ("alice in x", own(&x, "user:alice"), vec![&a_x]),
        ("bob in x", own(&x, "user:bob"), vec![&b_x]),
        ("alice in y", own(&y, "user:alice"), vec![&a_y]),
        ("bob in y", own(&y, "user:bob"), vec![]),
        ("carol in x", own(&x, "user:carol"), vec![]),
        (
            "space team of x",
            in_space(&x, "team"),
            vec![&b_team, &a_team],
        ),
        ("space other of x", in_space(&x, "other"), vec![&b_other]),
        ("space team of y", in_space(&y, "team"), vec![]),
        ("space none of x", in_space(&x, "none"), vec![]),
        ("alice with a NUL in x", own(&x, "user:alice\0"), vec![]),
        ("space team with a NUL", in_space(&x, "team\0"), vec![]),
    ];
    for (what, scope, want) in cases {
        let got = ok(C, what, store.list(&scope, &all()).await);
        check_turns(C, &format!("list {what}"), &got, &want);
        let hits = ok(C, what, store.search(&scope, "zebra", &all()).await);
        check_eq(
            C,
            &format!("search {what}"),
            sorted(hit_ids(&hits)),
            sorted(want.iter().map(|t| t.id.clone()).collect()),
        );
        check_scores(C, &format!("search {what}"), &hits);
    }
}

/// Session, since (inclusive), until (exclusive) and limit, on list and search; list
/// order on equal timestamps.
pub async fn filters<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "filters";
    let tenant = unique("filt");
    let scope = own(&tenant, "user:alice");
    let mk = |n: i64, session: Option<&str>| Turn {
        session: session.map(Into::into),
        ..turn(
            &format!("{tenant}-t{n}"),
            &tenant,
            "user:alice",
            BASE + n,
            "marker text",
            "marker reply",
        )
    };
    let t100 = mk(100, Some("s1"));
    let t200 = mk(200, Some("s2"));
    let t300 = mk(300, Some("s1"));
    let t400 = mk(400, None);
    let tie_a = turn(
        &format!("{tenant}-tie-a"),
        &tenant,
        "user:alice",
        BASE + 500,
        "marker",
        "",
    );
    let tie_b = turn(
        &format!("{tenant}-tie-b"),
        &tenant,
        "user:alice",
        BASE + 500,
        "marker",
        "",
    );
    // Another principal's turn in the same session name.
    let bob = Turn {
        session: Some("s1".into()),
        ..turn(
            &unique("filt-bob"),
            &tenant,
            "user:bob",
            BASE + 300,
            "marker",
            "",
        )
    };
    ok(
        C,
        "append",
        store
            .append(&[
                t300.clone(),
                tie_a.clone(),
                t100.clone(),
                t400.clone(),
                tie_b.clone(),
                t200.clone(),
                bob,
            ])
            .await,
    );

    let f = |session: Option<&str>, since: Option<i64>, until: Option<i64>, limit: usize| Filter {
        session: session.map(Into::into),
        since: since.map(|s| BASE + s),
        until: until.map(|u| BASE + u),
        limit,
    };
    let cases: Vec<(&str, Filter, Vec<&Turn>)> = vec![
        (
            "no filter (newest first, ties by id descending)",
            f(None, None, None, 0),
            vec![&tie_b, &tie_a, &t400, &t300, &t200, &t100],
        ),
        (
            "session s1",
            f(Some("s1"), None, None, 0),
            vec![&t300, &t100],
        ),
        ("session s2", f(Some("s2"), None, None, 0), vec![&t200]),
        ("unknown session", f(Some("s9"), None, None, 0), vec![]),
        (
            "since 200 (inclusive)",
            f(None, Some(200), None, 0),
            vec![&tie_b, &tie_a, &t400, &t300, &t200],
        ),
        (
            "until 300 (exclusive)",
            f(None, None, Some(300), 0),
            vec![&t200, &t100],
        ),
        (
            "since 200 until 400",
            f(None, Some(200), Some(400), 0),
            vec![&t300, &t200],
        ),
        ("since = until", f(None, Some(300), Some(300), 0), vec![]),
        (
            "since 201",
            f(None, Some(201), Some(500), 0),
            vec![&t400, &t300],
        ),
        ("limit 2", f(None, None, None, 2), vec![&tie_b, &tie_a]),
        (
            "limit 1 session s1",
            f(Some("s1"), None, None, 1),
            vec![&t300],
        ),
        (
            "session s1 since 100 until 301",
            f(Some("s1"), Some(100), Some(301), 0),
            vec![&t300, &t100],
        ),
    ];
    for (what, filter, want) in cases {
        let got = ok(C, what, store.list(&scope, &filter).await);
        check_turns(C, &format!("list {what}"), &got, &want);
        let hits = ok(C, what, store.search(&scope, "marker", &filter).await);
        check_scores(C, &format!("search {what}"), &hits);
        if filter.limit == 0 {
            check_eq(
                C,
                &format!("search {what}"),
                sorted(hit_ids(&hits)),
                sorted(want.iter().map(|t| t.id.clone()).collect()),
            );
        } else {
            let everything = ok(
                C,
                what,
                store
                    .search(
                        &scope,
                        "marker",
                        &Filter {
                            limit: 0,
                            ..filter.clone()
                        },
                    )
                    .await,
            );
            check_eq(
                C,
                &format!("search {what} (count)"),
                hits.len(),
                filter.limit.min(everything.len()),
            );
            check_true(
                C,
                &format!("search {what}: hits outside the filter"),
                hits.iter()
                    .all(|h| everything.iter().any(|e| e.turn.id == h.turn.id)),
            );
        }
    }
}

/// Limit 0 means 100; no read returns more than [`MAX_LIMIT`] rows.
pub async fn limits<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "limits";
    let tenant = unique("lim");
    let scope = own(&tenant, "user:alice");
    let n = MAX_LIMIT + 5;
    let turns: Vec<Turn> = (0..n)
        .map(|i| {
            turn(
                &format!("{tenant}-{i:05}"),
                &tenant,
                "user:alice",
                BASE + i as i64,
                "bulk item",
                &format!("number {i}"),
            )
        })
        .collect();
    ok(C, "append", store.append(&turns).await);
    let newest: Vec<String> = turns.iter().rev().map(|t| t.id.clone()).collect();

    let got = ok(C, "list limit 0", store.list(&scope, &limit(0)).await);
    check_eq(
        C,
        "list limit 0 = the newest 100",
        ids(&got),
        newest[..100].to_vec(),
    );
    let got = ok(C, "list limit 7", store.list(&scope, &limit(7)).await);
    check_eq(C, "list limit 7", ids(&got), newest[..7].to_vec());
    for asked in [MAX_LIMIT, MAX_LIMIT + 1, n, usize::MAX] {
        let got = ok(C, "list", store.list(&scope, &limit(asked)).await);
        check_eq(
            C,
            &format!("list limit {asked} capped at MAX_LIMIT"),
            ids(&got),
            newest[..MAX_LIMIT].to_vec(),
        );
    }
    for (asked, want) in [
        (0, 100),
        (7, 7),
        (MAX_LIMIT + 1, MAX_LIMIT),
        (usize::MAX, MAX_LIMIT),
    ] {
        let hits = ok(
            C,
            "search",
            store.search(&scope, "bulk", &limit(asked)).await,
        );
        check_eq(
            C,
            &format!("search limit {asked} (count)"),
            hits.len(),
            want,
        );
        check_scores(C, &format!("search limit {asked}"), &hits);
    }
}

/// The more relevant turn comes first; turns without any query word are absent; both
/// the user and the assistant text are searched, case-insensitively.
pub async fn search_ranking<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "search_ranking";
    let tenant = unique("rank");
    let scope = own(&tenant, "user:alice");
    let best = turn(
        &unique("rank-best"),
        &tenant,
        "user:alice",
        BASE + 1,
        "How does the Rust borrow checker work?",
        "The borrow checker in Rust enforces ownership; the borrow checker runs at compile time.",
    );
    let some = turn(
        &unique("rank-some"),
        &tenant,
        "user:alice",
        BASE + 2,
        "I left my bike out in the rain all winter long.",
        "Then the chain will rust and you should oil it before riding again.",
    );
    let none = turn(
        &unique("rank-none"),
        &tenant,
        "user:alice",
        BASE + 3,
        "Recipe for pancakes?",
        "Flour, eggs, milk and a pinch of salt.",
    );
    ok(
        C,
        "append",
        store
            .append(&[best.clone(), some.clone(), none.clone()])
            .await,
    );

    for query in [
        "rust borrow checker",
        "RUST Borrow CHECKER",
        "checker? borrow! rust...",
    ] {
        let hits = ok(C, query, store.search(&scope, query, &all()).await);
        check_eq(
            C,
            &format!("search {query:?}"),
            hit_ids(&hits),
            vec![best.id.clone(), some.id.clone()],
        );
        check_scores(C, &format!("search {query:?}"), &hits);
        check_true(
            C,
            &format!("search {query:?}: the more relevant turn scores strictly higher"),
            hits[0].score > hits[1].score,
        );
        check_turn(C, "best hit", &hits[0].turn, &best);
    }
    let hits = ok(C, "eggs", store.search(&scope, "eggs", &all()).await);
    check_eq(
        C,
        "assistant text is searched",
        hit_ids(&hits),
        vec![none.id.clone()],
    );
    let hits = ok(
        C,
        "pancakes",
        store.search(&scope, "zebra pancakes", &all()).await,
    );
    check_eq(C, "any word matches", hit_ids(&hits), vec![none.id.clone()]);
    let hits = ok(C, "absent", store.search(&scope, "xylophone", &all()).await);
    check_eq(C, "no word matches", hit_ids(&hits), vec![]);
    let hits = ok(
        C,
        "prefix",
        store.search(&scope, "pancake chec", &all()).await,
    );
    check_eq(C, "no prefix matching", hit_ids(&hits), vec![]);
    for empty in ["", "   ", "\n\t"] {
        let hits = ok(C, "empty query", store.search(&scope, empty, &all()).await);
        check_eq(C, &format!("empty query {empty:?}"), hit_ids(&hits), vec![]);
    }
}

/// Query syntax (FTS5, tsquery, SQL) in the query is neither an error nor syntax: only
/// its words are matched.
pub async fn search_syntax<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "search_syntax";
    let tenant = unique("syn");
    let scope = own(&tenant, "user:alice");
    let s1 = turn(
        &unique("syn-1"),
        &tenant,
        "user:alice",
        BASE + 1,
        "alpha beta",
        "plain words",
    );
    let s2 = turn(
        &unique("syn-2"),
        &tenant,
        "user:alice",
        BASE + 2,
        "secret plan",
        "nothing else",
    );
    let s3 = turn(
        &unique("syn-3"),
        &tenant,
        "user:alice",
        BASE + 3,
        "secretary notes",
        "meeting minutes",
    );
    ok(
        C,
        "append",
        store.append(&[s1.clone(), s2.clone(), s3.clone()]).await,
    );

    let nothing: &[&String] = &[];
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("\"", owned(nothing)),
        ("*", owned(nothing)),
        ("-", owned(nothing)),
        (":", owned(nothing)),
        ("NEAR(", owned(nothing)),
        ("OR", owned(nothing)),
        ("AND", owned(nothing)),
        ("NOT", owned(nothing)),
        ("( )", owned(nothing)),
        ("^", owned(nothing)),
        ("\"\" OR \"\"", owned(nothing)),
        ("* OR *", owned(nothing)),
        ("'; DROP TABLE memory_turns; --", owned(nothing)),
        ("'; DROP TABLE turns; --", owned(nothing)),
        ("' OR 1=1 --", owned(nothing)),
        ("%' OR '%'='%", owned(nothing)),
        ("\\", owned(nothing)),
        ("% _", owned(nothing)),
        ("!&|<->", owned(nothing)),
        ("$1 ?1 :name @x", owned(nothing)),
        ("{user_text assistant_text}:x", owned(nothing)),
        ("secret*", owned(&[&s2.id])),
        ("secret:*", owned(&[&s2.id])),
        ("-secret", owned(&[&s2.id])),
        ("\"secret", owned(&[&s2.id])),
        ("NOT secret", owned(&[&s2.id])),
        ("secret -plan", owned(&[&s2.id])),
        ("secret & !plan", owned(&[&s2.id])),
        ("NEAR(alpha beta)", owned(&[&s1.id])),
        ("alpha:*", owned(&[&s1.id])),
        ("^alpha", owned(&[&s1.id])),
        ("alpha OR secret", owned(&[&s1.id, &s2.id])),
        ("alpha AND secretary", owned(&[&s1.id, &s3.id])),
        ("meeting:minutes", owned(&[&s3.id])),
        ("user_text:secretary", owned(&[&s3.id])),
    ];
    for (query, want) in cases {
        let hits = ok(
            C,
            &format!("search {query:?}"),
            store.search(&scope, query, &all()).await,
        );
        check_eq(
            C,
            &format!("search {query:?}"),
            sorted(hit_ids(&hits)),
            sorted(want),
        );
        check_scores(C, &format!("search {query:?}"), &hits);
    }
    let got = ok(C, "list after", store.list(&scope, &all()).await);
    check_turns(C, "everything is still there", &got, &[&s3, &s2, &s1]);
    ok(C, "ping after", store.ping().await);
}

/// `delete` removes a turn only for the principal of the tenant that wrote it.
pub async fn delete_own_only<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "delete_own_only";
    let t = unique("del");
    let t2 = unique("del2");
    let a1 = turn(&unique("del-a1"), &t, "user:alice", BASE + 1, "mine", "");
    let a_room = Turn {
        space: Some("room".into()),
        ..turn(
            &unique("del-a-room"),
            &t,
            "user:alice",
            BASE + 2,
            "mine in room",
            "",
        )
    };
    let b1 = turn(&unique("del-b1"), &t, "user:bob", BASE + 3, "bob's", "");
    let a_t2 = turn(
        &unique("del-a-t2"),
        &t2,
        "user:alice",
        BASE + 4,
        "other tenant",
        "",
    );
    ok(
        C,
        "append",
        store
            .append(&[a1.clone(), a_room.clone(), b1.clone(), a_t2.clone()])
            .await,
    );

    let del = |tenant: &str, principal: &str, id: &str| {
        let (tenant, principal, id) = (tenant.to_owned(), principal.to_owned(), id.to_owned());
        async move { store.delete(&tenant, &principal, &id).await }
    };
    check_eq(
        C,
        "bob deletes alice's turn",
        ok(C, "delete", del(&t, "user:bob", &a1.id).await),
        false,
    );
    check_eq(
        C,
        "alice of another tenant deletes it",
        ok(C, "delete", del(&t2, "user:alice", &a1.id).await),
        false,
    );
    check_eq(
        C,
        "unknown id",
        ok(C, "delete", del(&t, "user:alice", "no-such-id").await),
        false,
    );
    let got = ok(C, "list", store.list(&own(&t, "user:alice"), &all()).await);
    check_turns(C, "after failed deletes", &got, &[&a1]);

    check_eq(
        C,
        "alice deletes her turn",
        ok(C, "delete", del(&t, "user:alice", &a1.id).await),
        true,
    );
    check_eq(
        C,
        "deleting again",
        ok(C, "delete", del(&t, "user:alice", &a1.id).await),
        false,
    );
    check_eq(
        C,
        "alice deletes her space turn",
        ok(C, "delete", del(&t, "user:alice", &a_room.id).await),
        true,
    );
    check_eq(
        C,
        "alice deletes bob's turn",
        ok(C, "delete", del(&t, "user:alice", &b1.id).await),
        false,
    );

    let got = ok(C, "list", store.list(&own(&t, "user:alice"), &all()).await);
    check_turns(C, "alice's turns after delete", &got, &[]);
    let hits = ok(
        C,
        "search",
        store.search(&own(&t, "user:alice"), "mine", &all()).await,
    );
    check_eq(
        C,
        "deleted turns are not found by search",
        hit_ids(&hits),
        vec![],
    );
    let got = ok(C, "list", store.list(&in_space(&t, "room"), &all()).await);
    check_turns(C, "room after delete", &got, &[]);
    let got = ok(C, "list", store.list(&own(&t, "user:bob"), &all()).await);
    check_turns(C, "bob's turn survives", &got, &[&b1]);
    let got = ok(C, "list", store.list(&own(&t2, "user:alice"), &all()).await);
    check_turns(C, "the other tenant's turn survives", &got, &[&a_t2]);
}

/// `delete_session` removes the principal's turns of that session outside spaces only.
pub async fn delete_session_scope<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "delete_session_scope";
    let t = unique("dses");
    let t2 = unique("dses2");
    let s =
        |id: &str, tenant: &str, principal: &str, at: i64, session: &str, space: Option<&str>| {
            Turn {
                session: Some(session.into()),
                space: space.map(Into::into),
                ..turn(
                    &unique(id),
                    tenant,
                    principal,
                    BASE + at,
                    "session text",
                    "",
                )
            }
        };
    let a1 = s("a1", &t, "user:alice", 1, "s1", None);
    let a2 = s("a2", &t, "user:alice", 2, "s1", None);
    let a3 = s("a3", &t, "user:alice", 3, "s2", None);
    let a_room = s("a-room", &t, "user:alice", 4, "s1", Some("room"));
    let b1 = s("b1", &t, "user:bob", 5, "s1", None);
    let a_t2 = s("a-t2", &t2, "user:alice", 6, "s1", None);
    ok(
        C,
        "append",
        store
            .append(&[a1, a2, a3.clone(), a_room.clone(), b1.clone(), a_t2.clone()])
            .await,
    );
    check_eq(
        C,
        "deleted",
        ok(
            C,
            "delete_session",
            store.delete_session(&t, "user:alice", "s1").await,
        ),
        2,
    );
    check_eq(
        C,
        "deleted again",
        ok(
            C,
            "delete_session",
            store.delete_session(&t, "user:alice", "s1").await,
        ),
        0,
    );
    check_eq(
        C,
        "unknown session",
        ok(
            C,
            "delete_session",
            store.delete_session(&t, "user:alice", "s9").await,
        ),
        0,
    );
    let got = ok(C, "list", store.list(&own(&t, "user:alice"), &all()).await);
    check_turns(C, "alice's other session survives", &got, &[&a3]);
    let got = ok(C, "list", store.list(&in_space(&t, "room"), &all()).await);
    check_turns(
        C,
        "the space turn of that session survives",
        &got,
        &[&a_room],
    );
    let got = ok(C, "list", store.list(&own(&t, "user:bob"), &all()).await);
    check_turns(C, "bob's turn of that session survives", &got, &[&b1]);
    let got = ok(C, "list", store.list(&own(&t2, "user:alice"), &all()).await);
    check_turns(C, "the other tenant's turn survives", &got, &[&a_t2]);
}

/// `erase` removes the principal's turns (spaces included), the spaces it owns with
/// their turns and members, and its memberships; other principals and tenants keep
/// theirs.
pub async fn erase_principal<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "erase_principal";
    let t = unique("erase");
    let t2 = unique("erase2");
    let (p, q, r) = ("user:pat", "user:quinn", "user:rory");
    ok(
        C,
        "create",
        store.create_space(&t, "pat-room", p, BASE).await,
    );
    ok(
        C,
        "create",
        store.create_space(&t, "quinn-room", q, BASE).await,
    );
    ok(
        C,
        "create",
        store.create_space(&t2, "pat-room", p, BASE).await,
    );
    ok(
        C,
        "member",
        store.set_member(&t, "pat-room", q, Right::Write).await,
    );
    ok(
        C,
        "member",
        store.set_member(&t, "pat-room", r, Right::Read).await,
    );
    ok(
        C,
        "member",
        store.set_member(&t, "quinn-room", p, Right::Read).await,
    );
    ok(
        C,
        "member",
        store.set_member(&t, "quinn-room", r, Right::Write).await,
    );
    ok(
        C,
        "member",
        store.set_member(&t2, "pat-room", q, Right::Read).await,
    );

    let mk = |id: &str, tenant: &str, principal: &str, space: Option<&str>, at: i64| Turn {
        space: space.map(Into::into),
        ..turn(
            &unique(id),
            tenant,
            principal,
            BASE + at,
            "erase me",
            "maybe",
        )
    };
    let p1 = mk("p1", &t, p, None, 1);
    let p2 = mk("p2", &t, p, None, 2);
    let p_in_q = mk("p-in-q", &t, p, Some("quinn-room"), 3);
    let p_in_p = mk("p-in-p", &t, p, Some("pat-room"), 4);
    let q_in_p = mk("q-in-p", &t, q, Some("pat-room"), 5);
    let q1 = mk("q1", &t, q, None, 6);
    let q_in_q = mk("q-in-q", &t, q, Some("quinn-room"), 7);
    let p_t2 = mk("p-t2", &t2, p, None, 8);
    let p_t2_room = mk("p-t2-room", &t2, p, Some("pat-room"), 9);
    ok(
        C,
        "append",
        store
            .append(&[
                p1,
                p2,
                p_in_q,
                p_in_p,
                q_in_p,
                q1.clone(),
                q_in_q.clone(),
                p_t2.clone(),
                p_t2_room.clone(),
            ])
            .await,
    );

    check_eq(
        C,
        "no erasure recorded yet",
        ok(C, "erased_at", store.erased_at(&t, p).await),
        None,
    );
    let before = crate::now_ms();
    let erased = ok(C, "erase", store.erase(&t, p).await);
    let at = ok(C, "erased_at", store.erased_at(&t, p).await);
    assert!(
        at.is_some_and(|at| at >= before && at <= crate::now_ms()),
        "memory conformance [{C}]: erased_at {at:?} is not the time of the erasure"
    );
    check_eq(
        C,
        "another principal has no erasure",
        ok(C, "erased_at", store.erased_at(&t, "user:nobody").await),
        None,
    );
    check_eq(
        C,
        "a principal with a NUL has no erasure (and no error)",
        ok(C, "erased_at", store.erased_at(&t, "user:\0").await),
        None,
    );
    check_eq(
        C,
        "erase counts",
        erased,
        Erased {
            turns: 5,
            spaces: 1,
            memberships: 3,
        },
    );
    check_eq(
        C,
        "erase again",
        ok(C, "erase", store.erase(&t, p).await),
        Erased::default(),
    );

    check_eq(
        C,
        "owned space is gone",
        ok(C, "space", store.space(&t, "pat-room").await),
        None,
    );
    check_eq(
        C,
        "members of the owned space",
        ok(C, "members", store.members(&t, "pat-room").await),
        vec![],
    );
    check_eq(
        C,
        "quinn's right in the erased space",
        ok(C, "right_of", store.right_of(&t, "pat-room", q).await),
        None,
    );
    check_eq(
        C,
        "pat's membership elsewhere",
        ok(C, "right_of", store.right_of(&t, "quinn-room", p).await),
        None,
    );
    check_eq(
        C,
        "rory keeps her membership",
        ok(C, "right_of", store.right_of(&t, "quinn-room", r).await),
        Some(Right::Write),
    );
    check_eq(
        C,
        "spaces of pat",
        ok(C, "spaces_of", store.spaces_of(&t, p).await),
        vec![],
    );
    let quinn_room = ok(C, "space", store.space(&t, "quinn-room").await);
    check_true(C, "quinn's space survives", quinn_room.is_some());
    let quinn_room = quinn_room.expect("checked above");
    check_eq(
        C,
        "spaces of quinn",
        ok(C, "spaces_of", store.spaces_of(&t, q).await),
        vec![(quinn_room.clone(), Right::Owner)],
    );
    check_eq(
        C,
        "spaces of rory",
        ok(C, "spaces_of", store.spaces_of(&t, r).await),
        vec![(quinn_room, Right::Write)],
    );

    let got = ok(C, "list", store.list(&own(&t, p), &all()).await);
    check_turns(C, "pat's own turns", &got, &[]);
    let hits = ok(
        C,
        "search",
        store.search(&own(&t, p), "erase", &all()).await,
    );
    check_eq(C, "pat's own turns by search", hit_ids(&hits), vec![]);
    let got = ok(
        C,
        "list",
        store.list(&in_space(&t, "pat-room"), &all()).await,
    );
    check_turns(C, "turns of the erased space", &got, &[]);
    let got = ok(
        C,
        "list",
        store.list(&in_space(&t, "quinn-room"), &all()).await,
    );
    check_turns(C, "quinn-room keeps quinn's turn only", &got, &[&q_in_q]);
    let got = ok(C, "list", store.list(&own(&t, q), &all()).await);
    check_turns(C, "quinn's own turns survive", &got, &[&q1]);
    let got = ok(C, "list", store.list(&own(&t2, p), &all()).await);
    check_turns(C, "pat's turns in another tenant survive", &got, &[&p_t2]);
    let got = ok(
        C,
        "list",
        store.list(&in_space(&t2, "pat-room"), &all()).await,
    );
    check_turns(
        C,
        "pat's space in another tenant keeps its turns",
        &got,
        &[&p_t2_room],
    );
    check_true(
        C,
        "pat's space in another tenant survives",
        ok(C, "space", store.space(&t2, "pat-room").await).is_some(),
    );
    check_eq(
        C,
        "members in another tenant survive",
        ok(C, "right_of", store.right_of(&t2, "pat-room", q).await),
        Some(Right::Read),
    );
}

/// `expire` with a tenant removes that tenant's turns created strictly before the time.
pub async fn expire_per_tenant<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "expire_per_tenant";
    let x = unique("exp-x");
    let y = unique("exp-y");
    let x0 = turn(&unique("x0"), &x, "user:alice", BASE, "old", "");
    let x_room = Turn {
        space: Some("room".into()),
        ..turn(&unique("x-room"), &x, "user:bob", BASE, "old in room", "")
    };
    let x1 = turn(&unique("x1"), &x, "user:alice", BASE + 10, "boundary", "");
    let x2 = turn(&unique("x2"), &x, "user:alice", BASE + 20, "new", "");
    let y0 = turn(&unique("y0"), &y, "user:alice", BASE, "other tenant", "");
    ok(
        C,
        "append",
        store
            .append(&[x0, x_room, x1.clone(), x2.clone(), y0.clone()])
            .await,
    );
    check_eq(
        C,
        "expired (strictly before)",
        ok(C, "expire", store.expire(Some(&x), BASE + 10).await),
        2,
    );
    check_eq(
        C,
        "expired again",
        ok(C, "expire", store.expire(Some(&x), BASE + 10).await),
        0,
    );
    let got = ok(C, "list", store.list(&own(&x, "user:alice"), &all()).await);
    check_turns(C, "x after expire", &got, &[&x2, &x1]);
    let got = ok(C, "list", store.list(&in_space(&x, "room"), &all()).await);
    check_turns(C, "x's space after expire", &got, &[]);
    let got = ok(C, "list", store.list(&own(&y, "user:alice"), &all()).await);
    check_turns(C, "the other tenant is untouched", &got, &[&y0]);
    check_eq(
        C,
        "expire the rest",
        ok(C, "expire", store.expire(Some(&x), BASE + 21).await),
        2,
    );
    let got = ok(C, "list", store.list(&own(&y, "user:alice"), &all()).await);
    check_turns(C, "the other tenant is still untouched", &got, &[&y0]);
}

/// `expire` without a tenant removes every tenant's turns created strictly before the
/// time. Uses turns from 1970 (unix ms 1 000 to 5 000): the store must hold no other
/// turns created before unix ms 2 000.
pub async fn expire_all_tenants<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "expire_all_tenants";
    let x = unique("expall-x");
    let y = unique("expall-y");
    let o1 = turn(&unique("o1"), &x, "user:alice", 1_000, "ancient", "");
    let o2 = turn(&unique("o2"), &x, "user:alice", 1_999, "ancient", "");
    let o3 = Turn {
        space: Some("room".into()),
        ..turn(&unique("o3"), &y, "user:bob", 1_000, "ancient", "")
    };
    let edge = turn(&unique("edge"), &y, "user:alice", 2_000, "boundary", "");
    let keep = turn(&unique("keep"), &x, "user:alice", 5_000, "less ancient", "");
    ok(
        C,
        "append",
        store
            .append(&[o1, o2, o3, edge.clone(), keep.clone()])
            .await,
    );
    check_eq(
        C,
        "expired in every tenant",
        ok(C, "expire", store.expire(None, 2_000).await),
        3,
    );
    let got = ok(C, "list", store.list(&own(&x, "user:alice"), &all()).await);
    check_turns(C, "x after expire", &got, &[&keep]);
    let got = ok(C, "list", store.list(&own(&y, "user:alice"), &all()).await);
    check_turns(C, "y after expire", &got, &[&edge]);
    let got = ok(C, "list", store.list(&in_space(&y, "room"), &all()).await);
    check_turns(C, "y's space after expire", &got, &[]);
}

/// Creating spaces: the returned and stored space, [`StoreError::Conflict`] on a taken
/// name (per tenant), [`StoreError::Invalid`] on a bad name.
pub async fn spaces<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "spaces";
    let t = unique("sp");
    let t2 = unique("sp2");
    let want = Space {
        tenant: t.clone(),
        name: "alpha-team".into(),
        owner: "user:owner".into(),
        created_at: BASE + 7,
    };
    let created = ok(
        C,
        "create",
        store
            .create_space(&t, "alpha-team", "user:owner", BASE + 7)
            .await,
    );
    check_eq(C, "created space", &created, &want);
    check_eq(
        C,
        "stored space",
        ok(C, "space", store.space(&t, "alpha-team").await),
        Some(want.clone()),
    );
    check_eq(
        C,
        "missing space",
        ok(C, "space", store.space(&t, "missing").await),
        None,
    );
    check_eq(
        C,
        "same name, other tenant",
        ok(C, "space", store.space(&t2, "alpha-team").await),
        None,
    );
    check_eq(
        C,
        "names are case-sensitive",
        ok(C, "space", store.space(&t, "Alpha-Team").await),
        None,
    );

    expect_err(
        C,
        "duplicate by another owner",
        store
            .create_space(&t, "alpha-team", "user:other", BASE + 8)
            .await,
        is_conflict,
        "Conflict",
    );
    expect_err(
        C,
        "duplicate by the same owner",
        store
            .create_space(&t, "alpha-team", "user:owner", BASE + 9)
            .await,
        is_conflict,
        "Conflict",
    );
    check_eq(
        C,
        "space after conflicts",
        ok(C, "space", store.space(&t, "alpha-team").await),
        Some(want),
    );

    let other = ok(
        C,
        "create in another tenant",
        store
            .create_space(&t2, "alpha-team", "user:other", BASE)
            .await,
    );
    check_eq(
        C,
        "other tenant's space owner",
        other.owner.as_str(),
        "user:other",
    );

    let long = "x".repeat(64);
    for name in ["A.b_c-9", long.as_str(), "-", "Alpha-Team"] {
        let s = ok(
            C,
            &format!("create {name:?}"),
            store.create_space(&t, name, "user:owner", BASE).await,
        );
        check_eq(C, &format!("name {name:?}"), s.name.as_str(), name);
        check_true(
            C,
            &format!("{name:?} is stored"),
            ok(C, "space", store.space(&t, name).await).is_some(),
        );
    }
    let too_long = "x".repeat(65);
    for name in [
        "",
        too_long.as_str(),
        "a b",
        "a/b",
        "ümlaut",
        "a\0b",
        "semi;colon",
        "quote'",
        "tab\t",
        "日本",
    ] {
        expect_err(
            C,
            &format!("create {name:?}"),
            store.create_space(&t, name, "user:owner", BASE).await,
            is_invalid,
            "Invalid",
        );
        check_eq(
            C,
            &format!("{name:?} not stored"),
            ok(C, "space", store.space(&t, name).await),
            None,
        );
    }
}

/// Members: rights, ordering, updates, removal, `right_of` and `spaces_of`.
pub async fn members_and_rights<S: MemoryStore + ?Sized>(store: &S) {
    const C: &str = "members_and_rights";
    let t = unique("mem");
    let t2 = unique("mem2");
    let (own_p, amy, bob, zed) = ("user:own", "user:amy", "user:Bob", "user:zed");
    let room = ok(
        C,
        "create",
        store.create_space(&t, "room", own_p, BASE).await,
    );
    let m = |principal: &str, right: Right| Member {
        principal: principal.into(),
        right,
    };
    check_eq(
        C,
        "members of a new space",
        ok(C, "members", store.members(&t, "room").await),
        vec![m(own_p, Right::Owner)],
    );

    ok(
        C,
        "set zed",
        store.set_member(&t, "room", zed, Right::Read).await,
    );
    ok(
        C,
        "set amy",
        store.set_member(&t, "room", amy, Right::Write).await,
    );
    ok(
        C,
        "set Bob",
        store.set_member(&t, "room", bob, Right::Read).await,
    );
    check_eq(
        C,
        "members: owner first, then by principal (byte order)",
        ok(C, "members", store.members(&t, "room").await),
        vec![
            m(own_p, Right::Owner),
            m(bob, Right::Read),
            m(amy, Right::Write),
            m(zed, Right::Read),
        ],
    );
    let right = |space: &'static str, principal: &'static str, tenant: &str| {
        let tenant = tenant.to_owned();
        async move { store.right_of(&tenant, space, principal).await }
    };
    check_eq(
        C,
        "right of the owner",
        ok(C, "right_of", right("room", own_p, &t).await),
        Some(Right::Owner),
    );
    check_eq(
        C,
        "right of amy",
        ok(C, "right_of", right("room", amy, &t).await),
        Some(Right::Write),
    );
    check_eq(
        C,
        "right of zed",
        ok(C, "right_of", right("room", zed, &t).await),
        Some(Right::Read),
    );
    check_eq(
        C,
        "right of Bob",
        ok(C, "right_of", right("room", bob, &t).await),
        Some(Right::Read),
    );
    check_eq(
        C,
        "right of bob (case differs)",
        ok(C, "right_of", right("room", "user:bob", &t).await),
        None,
    );
    check_eq(
        C,
        "right of a non-member",
        ok(C, "right_of", right("room", "user:nobody", &t).await),
        None,
    );
    check_eq(
        C,
        "right in a missing space",
        ok(C, "right_of", right("missing", own_p, &t).await),
        None,
    );
    check_eq(
        C,
        "right in another tenant",
        ok(C, "right_of", right("room", amy, &t2).await),
        None,
    );
    check_eq(
        C,
        "owner in another tenant",
        ok(C, "right_of", right("room", own_p, &t2).await),
        None,
    );

    ok(
        C,
        "update zed",
        store.set_member(&t, "room", zed, Right::Write).await,
    );
    check_eq(
        C,
        "updated right",
        ok(C, "right_of", right("room", zed, &t).await),
        Some(Right::Write),
    );
    ok(
        C,
        "set amy again",
        store.set_member(&t, "room", amy, Right::Write).await,
    );
    check_eq(
        C,
        "member count after updates",
        ok(C, "members", store.members(&t, "room").await).len(),
        4,
    );

    expect_err(
        C,
        "set_member with Owner",
        store.set_member(&t, "room", "user:x", Right::Owner).await,
        is_invalid,
        "Invalid",
    );
    check_eq(
        C,
        "not added as owner",
        ok(C, "right_of", right("room", "user:x", &t).await),
        None,
    );
    expect_err(
        C,
        "set_member naming the owner",
        store.set_member(&t, "room", own_p, Right::Read).await,
        is_invalid,
        "Invalid",
    );
    check_eq(
        C,
        "the owner stays owner",
        ok(C, "right_of", right("room", own_p, &t).await),
        Some(Right::Owner),
    );
    expect_err(
        C,
        "set_member on a missing space",
        store.set_member(&t, "missing", amy, Right::Read).await,
        is_invalid,
        "Invalid",
    );
    check_eq(
        C,
        "no right in the missing space",
        ok(C, "right_of", right("missing", amy, &t).await),
        None,
    );
    expect_err(
        C,
        "set_member on another tenant's space",
        store.set_member(&t2, "room", amy, Right::Read).await,
        is_invalid,
        "Invalid",
    );
    check_eq(
        C,
        "members of a missing space",
        ok(C, "members", store.members(&t, "missing").await),
        vec![],
    );

    check_eq(
        C,
        "remove amy",
        ok(C, "remove", store.remove_member(&t, "room", amy).await),
        true,
    );
    check_eq(
        C,
        "remove amy again",
        ok(C, "remove", store.remove_member(&t, "room", amy).await),
        false,
    );
    check_eq(
        C,
        "remove in another tenant",
        ok(C, "remove", store.remove_member(&t2, "room", zed).await),
        false,
    );
    check_eq(
        C,
        "remove the owner",
        ok(C, "remove", store.remove_member(&t, "room", own_p).await),
        false,
    );
    check_eq(
        C,
        "amy's right after removal",
        ok(C, "right_of", right("room", amy, &t).await),
        None,
    );
    check_eq(
        C,
        "owner after removals",
        ok(C, "right_of", right("room", own_p, &t).await),
        Some(Right::Owner),
    );
    check_eq(
        C,
        "members after removal",
        ok(C, "members", store.members(&t, "room").await),
        vec![
            m(own_p, Right::Owner),
            m(bob, Right::Read),
            m(zed, Right::Write),
        ],
    );

    let another = ok(
        C,
        "create",
        store.create_space(&t, "another", amy, BASE + 1).await,
    );
    let first = ok(
        C,
        "create",
        store.create_space(&t, "aaa-first", zed, BASE + 2).await,
    );
    ok(
        C,
        "set own in aaa-first",
        store.set_member(&t, "aaa-first", own_p, Right::Read).await,
    );
    ok(
        C,
        "create in t2",
        store.create_space(&t2, "zzz", own_p, BASE).await,
    );
    check_eq(
        C,
        "spaces of the owner (sorted by name)",
        ok(C, "spaces_of", store.spaces_of(&t, own_p).await),
        vec![(first.clone(), Right::Read), (room.clone(), Right::Owner)],
    );
    check_eq(
        C,
        "spaces of amy",
        ok(C, "spaces_of", store.spaces_of(&t, amy).await),
        vec![(another, Right::Owner)],
    );
    check_eq(
        C,
        "spaces of zed",
        ok(C, "spaces_of", store.spaces_of(&t, zed).await),
        vec![(first, Right::Owner), (room, Right::Write)],
    );
    check_eq(
        C,
        "spaces of a stranger",
        ok(C, "spaces_of", store.spaces_of(&t, "user:nobody").await),
        vec![],
    );
    check_eq(
        C,
        "spaces of zed in t2",
        ok(C, "spaces_of", store.spaces_of(&t2, zed).await),
        vec![],
    );
    check_eq(
        C,
        "spaces of the owner in t2",
        ok(C, "spaces_of", store.spaces_of(&t2, own_p).await).len(),
        1,
    );
}
