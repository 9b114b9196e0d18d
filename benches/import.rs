//! Which side limits an import: the importer against a sink that decodes each
//! bulk body and acknowledges it without storing, beside the importer against
//! the service (in-process, its store in a temporary directory). Same
//! synthetic faces, same importer settings as `luna-matcher import`'s
//! defaults, everything on this machine's cores.
//!
//! `cargo bench --bench import [-- FACES]` (default 200000 per run)

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use luna_core::descriptor::Dtype;
use luna_matcher::config::Config;
use luna_matcher::tools::client::Api;
use luna_matcher::tools::import::{self, Format, ListChoice, OnBadRow, Plan};
use luna_matcher::tools::synthetic::{Gallery, ListSpec, Synthetic};
use serde::de::IgnoredAny;
use serde_json::json;
use uuid::Uuid;

/// Decode the faces, answer their ids, store nothing.
async fn sink_bulk(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let msgpack = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/msgpack"));
    let faces: Result<Vec<IgnoredAny>, String> =
        if msgpack { rmp_serde::from_slice(&body).map_err(|e| e.to_string()) } else { serde_json::from_slice(&body).map_err(|e| e.to_string()) };
    match faces {
        Ok(faces) => HttpResponse::Created().json(json!({"face_ids": (0..faces.len()).map(|_| Uuid::new_v4()).collect::<Vec<_>>()})),
        Err(e) => HttpResponse::BadRequest().json(json!({"error_code": 11001, "detail": e})),
    }
}

async fn sink_list() -> HttpResponse {
    HttpResponse::Created().json(json!({"list_id": Uuid::new_v4()}))
}

/// Serve `app` on a loopback port from its own thread; its address.
fn serve_in_thread(run: impl FnOnce(TcpListener) -> std::io::Result<actix_web::dev::Server> + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || actix_rt::System::new().block_on(async move { run(listener).unwrap().await.unwrap() }));
    url
}

fn main() {
    let faces: u64 = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let sink = serve_in_thread(|listener| {
        Ok(HttpServer::new(|| {
            App::new()
                .app_data(web::PayloadConfig::new(256 << 20))
                .route("/1/lists", web::post().to(sink_list))
                .route("/1/faces/bulk", web::post().to(sink_bulk))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)?
        .run())
    });
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.data_dir = data.path().to_path_buf();
    let service = serve_in_thread(move |listener| {
        let core = luna_matcher::server::core(&config).expect("store");
        let state = luna_matcher::server::state(&config, core, None);
        luna_matcher::server::serve(&config, state, listener)
    });
    std::thread::sleep(Duration::from_millis(300));

    let runtime = luna_matcher::tools::runtime();
    println!("{faces} faces a run; importer defaults: 4 requests in flight, batches up to 8 MiB sized for 500 ms\n");
    println!("| faces | body | into the sink | into the service | service / sink |\n|---|---|---|---|---|");
    for dtype in [Dtype::U8, Dtype::F32] {
        let gallery = Arc::new(Gallery::generate(ListSpec { dtype, size: faces }, 7));
        for format in [Format::Msgpack, Format::Json] {
            let rate = |url: &str| {
                let out = tempfile::tempdir().unwrap();
                let plan = Plan {
                    list: ListChoice::New(Uuid::new_v4()),
                    out: out.path().to_path_buf(),
                    on_bad_row: OnBadRow::Stop,
                    concurrency: 4,
                    max_body: 8 << 20,
                    target_latency: Duration::from_millis(500),
                    format,
                    max_requests: None,
                    progress: false,
                };
                let api = Api::new(url, Duration::from_secs(120)).unwrap();
                let outcome = runtime.block_on(import::run(&api, Box::new(Synthetic::new(gallery.clone(), 7)), &plan)).unwrap();
                assert!(outcome.summary.complete, "{:?}", outcome.summary);
                outcome.summary.faces_per_s
            };
            let (into_sink, into_service) = (rate(&sink), rate(&service));
            println!(
                "| {} | {} | {:.0} faces/s | {:.0} faces/s | {:.2} |",
                if dtype == Dtype::U8 { "512 x u8" } else { "512 x f32" },
                if format == Format::Msgpack { "msgpack" } else { "JSON" },
                into_sink,
                into_service,
                into_service / into_sink
            );
        }
    }
}
