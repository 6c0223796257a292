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
        self.store.append(batch).await.map_err(|e| match e {
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
