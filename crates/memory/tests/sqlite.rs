//! The conformance suite against the SQLite backend, in memory and on disk.

use oba_memory::sqlite::SqliteStore;
use oba_memory::{conformance, Filter, MemoryStore, Right, Scope, Turn};

#[tokio::test]
async fn in_memory_store_passes_conformance() {
    let store = SqliteStore::in_memory().await.unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn file_store_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("memory.db"))
        .await
        .unwrap();
    conformance::run_all(&store).await;
    store.close().await;
}

#[tokio::test]
async fn in_memory_stores_are_separate() {
    let a = SqliteStore::in_memory().await.unwrap();
    let b = SqliteStore::in_memory().await.unwrap();
    a.append(&[Turn::new("only-in-a", "t", "p", "/r", 1)])
        .await
        .unwrap();
    let scope = Scope::Own {
        tenant: "t".into(),
        principal: "p".into(),
    };
    assert_eq!(a.list(&scope, &Filter::default()).await.unwrap().len(), 1);
    assert!(b.list(&scope, &Filter::default()).await.unwrap().is_empty());
}

#[tokio::test]
async fn file_store_keeps_data_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested-name.db");
    let turn = Turn {
        session: Some("s".into()),
        embedding: Some(vec![0.25, -1.5]),
        ..Turn::new(
            "persist-1",
            "acme",
            "user:alice",
            "/api/chat",
            1_700_000_000_000,
        )
        .with_text("remember the lighthouse", "noted")
    };
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.append(std::slice::from_ref(&turn)).await.unwrap();
        store
            .create_space("acme", "crew", "user:alice", 5)
            .await
            .unwrap();
        store
            .set_member("acme", "crew", "user:bob", Right::Write)
            .await
            .unwrap();
        store.close().await;
    }
    assert!(path.exists());
    // Reopening runs the (idempotent) schema creation again.
    let store = SqliteStore::open(&path).await.unwrap();
    let scope = Scope::Own {
        tenant: "acme".into(),
        principal: "user:alice".into(),
    };
    assert_eq!(
        store.list(&scope, &Filter::default()).await.unwrap(),
        vec![turn.clone()]
    );
    let hits = store
        .search(&scope, "lighthouse", &Filter::default())
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].turn, turn);
    assert_eq!(
        store.right_of("acme", "crew", "user:bob").await.unwrap(),
        Some(Right::Write)
    );
    assert_eq!(
        store.right_of("acme", "crew", "user:alice").await.unwrap(),
        Some(Right::Owner)
    );
    // The index follows deletes across reopening too.
    assert!(store
        .delete("acme", "user:alice", "persist-1")
        .await
        .unwrap());
    assert!(store
        .search(&scope, "lighthouse", &Filter::default())
        .await
        .unwrap()
        .is_empty());
    store.close().await;
}

#[tokio::test]
async fn file_store_in_missing_directory_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(&dir.path().join("no/such/dir/memory.db"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, oba_memory::StoreError::Unavailable(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn store_works_as_trait_object() {
    let store: std::sync::Arc<dyn MemoryStore> =
        std::sync::Arc::new(SqliteStore::in_memory().await.unwrap());
    conformance::run_all(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_store_takes_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("memory.db"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let id = format!("c-{task}-{i}");
                let turn = Turn::new(&id, "acme", "user:alice", "/r", i).with_text("busy", "yes");
                store.append(&[turn]).await.unwrap();
                let scope = Scope::Own {
                    tenant: "acme".into(),
                    principal: "user:alice".into(),
                };
                store
                    .search(&scope, "busy", &Filter::default())
                    .await
                    .unwrap();
                if i % 5 == 0 {
                    store
                        .erase("acme", &format!("user:nobody-{task}"))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let scope = Scope::Own {
        tenant: "acme".into(),
        principal: "user:alice".into(),
    };
    let all = Filter {
        limit: 1000,
        ..Filter::default()
    };
    assert_eq!(store.list(&scope, &all).await.unwrap().len(), 200);
    store.close().await;
}

#[tokio::test]
async fn conformance_can_run_twice_on_one_store() {
    let store = SqliteStore::in_memory().await.unwrap();
    conformance::run_all(&store).await;
    conformance::run_all(&store).await;
}
