//! A typed task, a producer and a worker in one program.
//!
//! ```sh
//! scripts/broker.sh
//! cargo run --example thumbnails
//! ```
//!
//! It declares namespace `example` on the local broker, starts a worker, enqueues ten
//! thumbnails (one of them delayed by 2 s, one failing once before it succeeds), waits until
//! all ran, then shuts the worker down gracefully.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use warren::broker::Session;
use warren::topology::{Teardown, teardown};
use warren::{EnqueueOptions, Producer, Settings, Task, TaskContext, TaskError, Worker};

/// The task: which image to shrink and to what width. Small payload: a path, not pixels.
#[derive(Debug, Serialize, Deserialize)]
struct MakeThumbnail {
    path: String,
    width: u32,
}

impl Task for MakeThumbnail {
    // The wire name: stays the same if the Rust type is renamed.
    const NAME: &'static str = "make_thumbnail";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("warn,lapin=off,warren=info")
        .init();
    let mut settings = Settings::from_toml(
        r#"
        namespace = "example"
        queue_type = "quorum"
        max_delay = "1h"
        [tasks.make_thumbnail]
        max_attempts = 3
        [tasks.make_thumbnail.backoff]
        initial = "1s"
        jitter = 0.0
        "#,
    )?;
    settings.apply(&warren::config::Overrides::from_env());
    settings.validate()?;

    // Declare the topology (idempotent; `warren topology apply` does the same).
    let session = Session::open(&settings.amqp_url, "example", settings.connect_timeout).await?;
    session.apply(&settings.plan()).await?;
    session.close("declared").await;

    // The worker: a handler per task type.
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let worker =
        Worker::new(&settings)
            .concurrency(4)
            .handle(move |t: MakeThumbnail, ctx: TaskContext| {
                let done = counter.clone();
                async move {
                    if t.path == "flaky.png" && ctx.attempt == 1 {
                        return Err(TaskError::retry("storage timed out"));
                    }
                    println!(
                        "thumbnail {} at {}px (task {}, attempt {})",
                        t.path, t.width, ctx.id, ctx.attempt
                    );
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    // The producer: each call returns once the broker confirmed the task.
    let producer = Producer::new(&settings)?;
    for i in 0..8 {
        producer
            .enqueue(&MakeThumbnail {
                path: format!("photo-{i}.png"),
                width: 128,
            })
            .await?;
    }
    producer
        .enqueue(&MakeThumbnail {
            path: "flaky.png".into(),
            width: 64,
        })
        .await?;
    producer
        .enqueue_with(
            &MakeThumbnail {
                path: "later.png".into(),
                width: 256,
            },
            EnqueueOptions::default().delay(Duration::from_secs(2)),
        )
        .await?;

    while done.load(Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await??;
    producer.close().await;
    println!("all 10 thumbnails made");

    // Leave nothing behind: the example's namespace goes (`warren topology delete` does the
    // same, refusing while tasks wait unless told otherwise).
    let session = Session::open(&settings.amqp_url, "example", settings.connect_timeout).await?;
    let plan = settings.plan();
    let removed = teardown(
        &plan,
        &Default::default(),
        session.connection(),
        Teardown::RefuseUnlessEmpty,
    )
    .await;
    session.close("deleted").await;
    removed?;
    Ok(())
}
