//! The writer: the queue and its drop counter, flush and checkpoints (by count, by time,
//! at shutdown), retries, counters.

mod common;

use std::time::Duration;

use common::*;
use oba_audit::{
    verify, verify_file, AuditConfig, AuditEvent, AuditLog, AuditStats, CheckpointSigner, FileSink,
    Kind,
};

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    // A current-thread runtime: the writer task cannot run until this test awaits, so
    // the queue (2 places) fills deterministically.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = key();
    let log = AuditLog::start(
        FileSink::open(&path).unwrap(),
        CheckpointSigner::from_jwk(&key).unwrap(),
        AuditConfig {
            queue_capacity: 2,
            ..config(100)
        },
    )
    .await
    .unwrap();
    let accepted: Vec<bool> = (0..5).map(|i| log.record(event(i))).collect();
    assert_eq!(accepted, [true, true, false, false, false]);
    let stats = log.stats();
    assert_eq!((stats.dropped, stats.queued, stats.written), (3, 2, 0));
    let stats = log.shutdown().await.unwrap();
    assert_eq!(
        stats,
        AuditStats {
            written: 2,
            checkpoints: 1,
            dropped: 3,
            write_errors: 0,
            queued: 0,
            last_seq: 3,
        }
    );
    // The loss is in the signed trail too.
    let l = lines(&path);
    assert_eq!(parse(&l[2]).event.details["dropped"], 3);
    assert!(verify_file(&path, &trusted(&key)).unwrap().is_intact());
}

#[tokio::test]
async fn dropped_counts_in_a_checkpoint_are_deltas() {
    let sink = MemorySink::default();
    let log = AuditLog::start(
        sink.clone(),
        CheckpointSigner::from_jwk(&key()).unwrap(),
        AuditConfig {
            queue_capacity: 1,
            ..config(100)
        },
    )
    .await
    .unwrap();
    assert!(log.record(event(0)));
    assert!(!log.record(event(1)));
    log.checkpoint().await.unwrap();
    assert!(log.record(event(2)));
    log.checkpoint().await.unwrap();
    log.shutdown().await.unwrap();
    let r = sink.records();
    let drops: Vec<_> = r
        .iter()
        .filter(|r| r.is_checkpoint())
        .map(|r| r.event.details["dropped"].as_u64().unwrap())
        .collect();
    assert_eq!(drops, [1, 0]);
}

#[tokio::test]
async fn the_checkpoint_kind_is_refused() {
    let log = AuditLog::start(
        MemorySink::default(),
        CheckpointSigner::from_jwk(&key()).unwrap(),
        config(100),
    )
    .await
    .unwrap();
    assert!(!log.record(AuditEvent::new(Kind::Checkpoint, T0)));
    assert!(!log.record(AuditEvent::new(Kind::Other("checkpoint".into()), T0)));
    assert_eq!(log.stats().dropped, 2);
    let stats = log.shutdown().await.unwrap();
    assert_eq!((stats.written, stats.checkpoints), (0, 0));
}

#[tokio::test]
async fn recording_after_shutdown_drops() {
    let log = AuditLog::start(
        MemorySink::default(),
        CheckpointSigner::from_jwk(&key()).unwrap(),
        config(100),
    )
    .await
    .unwrap();
    let other = log.clone();
    assert!(other.record(event(0)));
    let stats = log.shutdown().await.unwrap();
    assert_eq!((stats.written, stats.checkpoints), (1, 1));
    assert!(!other.record(event(1)));
    assert_eq!(other.stats().dropped, 1);
    assert_eq!(other.flush().await, Err(oba_audit::AuditError::Closed));
}

#[tokio::test]
async fn flush_writes_and_checkpoint_signs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = key();
    let log = AuditLog::start(
        FileSink::open(&path).unwrap(),
        CheckpointSigner::from_jwk(&key).unwrap(),
        config(100),
    )
    .await
    .unwrap();
    for i in 0..3 {
        log.record(event(i));
    }
    log.flush().await.unwrap();
    assert_eq!(lines(&path).len(), 3);
    let report = verify_file(&path, &trusted(&key)).unwrap();
    assert_eq!(
        report.summary(),
        "ok: 3 records, 0 checkpoints, 3 unsigned at the end"
    );
    log.checkpoint().await.unwrap();
    assert_eq!(lines(&path).len(), 4);
    // Nothing unsigned: no second checkpoint.
    log.checkpoint().await.unwrap();
    assert_eq!(lines(&path).len(), 4);
    let stats = log.shutdown().await.unwrap();
    assert_eq!(
        (stats.written, stats.checkpoints, stats.last_seq),
        (3, 1, 4)
    );
    assert_eq!(lines(&path).len(), 4);
}

#[tokio::test]
async fn a_checkpoint_is_written_after_the_interval() {
    let sink = MemorySink::default();
    let log = AuditLog::start(
        sink.clone(),
        CheckpointSigner::from_jwk(&key()).unwrap(),
        AuditConfig {
            checkpoint_interval: Duration::from_millis(100),
            ..config(1000)
        },
    )
    .await
    .unwrap();
    log.record(event(0));
    log.flush().await.unwrap();
    assert_eq!(sink.records().len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = sink.records();
    assert_eq!(r.len(), 2);
    assert!(r[1].is_checkpoint());
    assert_eq!(log.stats().checkpoints, 1);
    // Nothing new: no more checkpoints.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.records().len(), 2);
    log.shutdown().await.unwrap();
    assert_eq!(sink.records().len(), 2);
}

#[tokio::test]
async fn a_checkpoint_every_n_records() {
    let sink = MemorySink::default();
    let log = AuditLog::start(
        sink.clone(),
        CheckpointSigner::from_jwk(&key()).unwrap(),
        AuditConfig {
            batch_size: 7,
            ..config(3)
        },
    )
    .await
    .unwrap();
    for i in 0..20 {
        log.record(event(i));
    }
    let stats = log.shutdown().await.unwrap();
    // 3 events then a checkpoint, six times (24 records), 2 events, the final one.
    assert_eq!(
        (stats.written, stats.checkpoints, stats.last_seq),
        (20, 7, 27)
    );
    let seqs: Vec<u64> = sink
        .records()
        .iter()
        .filter(|r| r.is_checkpoint())
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [4, 8, 12, 16, 20, 24, 27]);
}

#[tokio::test]
async fn a_failing_sink_is_retried() {
    let sink = MemorySink::failing(2, false);
    let key = key();
    let log = AuditLog::start(
        sink.clone(),
        CheckpointSigner::from_jwk(&key).unwrap(),
        config(100),
    )
    .await
    .unwrap();
    log.record(event(0));
    log.record(event(1));
    let stats = log.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.written,
            stats.checkpoints,
            stats.write_errors,
            stats.dropped
        ),
        (2, 1, 2, 0)
    );
    let report = verify(sink.records().into_iter().map(Ok), &trusted(&key));
    assert_eq!(
        report.summary(),
        "ok: 3 records, 1 checkpoints, 0 unsigned at the end"
    );
}

#[tokio::test]
async fn a_sink_that_keeps_failing_drops_the_batch_and_keeps_the_chain() {
    let sink = MemorySink::failing(2, false);
    let key = key();
    let log = AuditLog::start(
        sink.clone(),
        CheckpointSigner::from_jwk(&key).unwrap(),
        AuditConfig {
            write_attempts: 2,
            ..config(100)
        },
    )
    .await
    .unwrap();
    log.record(event(0));
    log.record(event(1));
    assert!(log.flush().await.is_err());
    assert_eq!(log.stats().dropped, 2);
    log.record(event(2));
    let stats = log.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.written,
            stats.checkpoints,
            stats.write_errors,
            stats.dropped
        ),
        (1, 1, 2, 2)
    );
    let records = sink.records();
    assert_eq!(
        records[0].seq, 1,
        "the chain did not advance for the lost batch"
    );
    assert_eq!(records[0].event, event(2));
    assert_eq!(records[1].event.details["dropped"], 2);
    assert!(verify(records.into_iter().map(Ok), &trusted(&key)).is_intact());
}

#[tokio::test]
async fn a_lost_acknowledgement_is_not_written_twice() {
    let sink = MemorySink::failing(1, true);
    let key = key();
    let log = AuditLog::start(
        sink.clone(),
        CheckpointSigner::from_jwk(&key).unwrap(),
        config(100),
    )
    .await
    .unwrap();
    log.record(event(0));
    log.record(event(1));
    log.flush().await.unwrap();
    let stats = log.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.written,
            stats.checkpoints,
            stats.write_errors,
            stats.dropped
        ),
        (2, 1, 1, 0)
    );
    let records = sink.records();
    assert_eq!(records.len(), 3);
    assert!(verify(records.into_iter().map(Ok), &trusted(&key)).is_intact());
}

#[tokio::test]
async fn bad_settings_are_refused() {
    for config in [
        AuditConfig {
            batch_size: 0,
            ..AuditConfig::default()
        },
        AuditConfig {
            batch_size: 1001,
            ..AuditConfig::default()
        },
        AuditConfig {
            checkpoint_every: 0,
            ..AuditConfig::default()
        },
        AuditConfig {
            checkpoint_interval: Duration::ZERO,
            ..AuditConfig::default()
        },
    ] {
        let err = AuditLog::start(
            MemorySink::default(),
            CheckpointSigner::from_jwk(&key()).unwrap(),
            config,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, oba_audit::AuditError::Invalid(_)));
    }
}

#[test]
fn stats_render_as_prometheus_text() {
    let text = AuditStats {
        written: 10,
        checkpoints: 3,
        dropped: 2,
        write_errors: 1,
        queued: 4,
        last_seq: 13,
    }
    .render();
    for line in [
        "attach_audit_records_total{record=\"event\"} 10",
        "attach_audit_records_total{record=\"checkpoint\"} 3",
        "attach_audit_dropped_total 2",
        "attach_audit_write_errors_total 1",
        "attach_audit_queue_depth 4",
        "attach_audit_last_seq 13",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}
