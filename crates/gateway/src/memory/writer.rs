//! Memory's sink for the [`crate::outbox`]: embeddings first (when configured), then
//! the store.

use std::sync::Arc;

use oba_memory::{MemoryStore, Turn};

use super::embed::Embedder;

/// Writes turns to the store, with embeddings when an embedder is configured.
pub struct TurnSink {
    /// The store.
    pub store: Arc<dyn MemoryStore>,
    /// Vector recall's embedder.
    pub embedder: Option<Arc<Embedder>>,
}

#[async_trait::async_trait]
impl crate::outbox::Sink<Turn> for TurnSink {
    async fn write(&self, batch: &mut [Turn]) -> Result<(), crate::outbox::SinkError> {
        if let Some(e) = &self.embedder {
            embed(e, batch).await;
        }
        // A turn for a space that is gone, or was created again after the turn (a
        // replay after an erasure), must not land in whatever now has that name.
        // Erasure: a turn older than its principal's last erasure (still queued or
        // journaled when the erasure ran) is not written.
        let mut erased: Vec<((String, String), Option<i64>)> = Vec::new();
        for t in batch.iter() {
            let k = (t.tenant.clone(), t.principal.clone());
            if !erased.iter().any(|(e, _)| *e == k) {
                let at = match self.store.erased_at(&t.tenant, &t.principal).await {
                    Ok(at) => at,
                    Err(oba_memory::StoreError::Unavailable(m)) => {
                        return Err(crate::outbox::SinkError::Unavailable(m))
                    }
                    Err(_) => None,
                };
                erased.push((k, at));
            }
        }
        let mut keep = Vec::with_capacity(batch.len());
        for t in batch.iter() {
            let after_erasure = erased
                .iter()
                .find(|((tn, p), _)| *tn == t.tenant && *p == t.principal)
                .and_then(|(_, at)| *at)
                .is_none_or(|at| t.created_at > at);
            let ok = after_erasure
                && match &t.space {
                    None => true,
                    Some(name) => match self.store.space(&t.tenant, name).await {
                        Ok(Some(s)) => s.created_at <= t.created_at,
                        Ok(None) => false,
                        Err(oba_memory::StoreError::Unavailable(m)) => {
                            return Err(crate::outbox::SinkError::Unavailable(m))
                        }
                        Err(_) => false,
                    },
                };
            if !ok {
                crate::log(format_args!(
                    "memory: turn {} dropped: erased since, or its space no longer exists as it was",
                    t.id
                ));
            }
            keep.push(ok);
        }
        let kept: Vec<Turn>;
        let turns: &[Turn] = if keep.iter().all(|k| *k) {
            batch
        } else {
            kept = batch
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(t, _)| t.clone())
                .collect();
            &kept
        };
        self.store.append(turns).await.map_err(|e| match e {
            oba_memory::StoreError::Unavailable(m) => crate::outbox::SinkError::Unavailable(m),
            e => crate::outbox::SinkError::Rejected(e.to_string()),
        })
    }
}

/// Adds embeddings to the turns that lack one; on failure they are stored without (recall
/// then falls back to full-text ranking for them).
async fn embed(embedder: &Embedder, turns: &mut [Turn]) {
    let inputs: Vec<String> = turns
        .iter()
        .filter(|t| t.embedding.is_none())
        .map(|t| format!("{}\n{}", t.user, t.assistant))
        .collect();
    match embedder.embed(&inputs).await {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for t in turns.iter_mut().filter(|t| t.embedding.is_none()) {
                t.embedding = vectors.next();
            }
        }
        Err(e) => crate::log(format_args!("memory: embeddings skipped: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Sink;
    use oba_memory::{Filter, Scope};

    #[tokio::test]
    async fn a_turn_never_lands_in_a_later_space_of_the_same_name() {
        let store = Arc::new(oba_memory::sqlite::SqliteStore::in_memory().await.unwrap());
        store
            .create_space("acme", "team", "key:a", 1_000)
            .await
            .unwrap();
        let sink = TurnSink {
            store: store.clone(),
            embedder: None,
        };
        let turn = |id: &str, space: &str, at: i64| {
            let mut t =
                Turn::new(id, "acme", "key:b", "/v1/chat/completions", at).with_text("q", "a");
            t.space = Some(space.into());
            t
        };
        let mut batch = vec![
            turn("old", "team", 500),   // written into an earlier "team" (replayed late)
            turn("new", "team", 2_000), // written into this one
            turn("ghost", "gone", 2_000),
            Turn::new("own", "acme", "key:b", "/v1/chat/completions", 2_000).with_text("q", "a"),
        ];
        sink.write(&mut batch).await.unwrap();
        let space = Scope::Space {
            tenant: "acme".into(),
            space: "team".into(),
        };
        let ids: Vec<String> = store
            .list(&space, &Filter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["new"]);
        let own = Scope::Own {
            tenant: "acme".into(),
            principal: "key:b".into(),
        };
        assert_eq!(store.list(&own, &Filter::default()).await.unwrap().len(), 1);
        // key:b erases everything; a turn of theirs from before the erasure, written
        // late, stays erased; a later one is kept.
        store.erase("acme", "key:b").await.unwrap();
        let at = store.erased_at("acme", "key:b").await.unwrap().unwrap();
        let mut late = vec![
            Turn::new("late", "acme", "key:b", "/v1/chat/completions", at - 1).with_text("q", "a"),
            Turn::new("after", "acme", "key:b", "/v1/chat/completions", at + 1).with_text("q", "a"),
        ];
        sink.write(&mut late).await.unwrap();
        let ids: Vec<String> = store
            .list(&own, &Filter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["after"]);
    }
}
