//! Raw bytes to every peer RPC of a real node, over HTTP/2 on loopback:
//! the first byte picks the method, the rest is the message exactly as a
//! caller could send it, schema or not. The node is one process-wide
//! instance with no TLS and no tokens, so nothing authenticates and every
//! input reaches the receive budget, the codec's decoded-cost charge and
//! the handlers. Nothing may panic (a panic on any thread aborts the run),
//! every call must be answered within 10 s, and the node must keep
//! answering its health check.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use meshkv::{
    config::{Config, PeerConfig},
    grpc_codec::Raw,
    node,
    security::accept,
};
use prost::bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::{
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};

const METHODS: [&str; 5] = [
    "/meshkv.v1.Replication/Replicate",
    "/meshkv.v1.Replication/ReplicateStream",
    "/meshkv.v1.AntiEntropy/Digest",
    "/meshkv.v1.AntiEntropy/BucketVersions",
    "/meshkv.v1.AntiEntropy/Fetch",
];

struct Harness {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // One fixed place, emptied at each start, so runs leave at most one behind.
        let dir = std::env::temp_dir().join("meshkv-fuzz-peer-rpc");
        let _ = std::fs::remove_dir_all(&dir);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut config = Config::default();
        config.node_id = "n1".into();
        config.listen = addr;
        config.data_dir = dir;
        // A peer that never answers: "n2" is an origin the node accepts.
        config.peers = vec![PeerConfig {
            id: "n2".into(),
            url: "http://127.0.0.1:9".into(),
        }];
        let _guard = rt.enter();
        let incoming = accept::incoming(listener, None, "fuzz");
        rt.spawn(async move {
            if let Err(e) = node::serve(config, incoming, addr, CancellationToken::new()).await {
                panic!("the node stopped: {e}");
            }
        });
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy();
        let h = Harness { rt, channel };
        assert!(
            h.rt.block_on(answers(&h.channel)),
            "the node never answered"
        );
        h
    })
}

async fn answers(channel: &Channel) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..200 {
        if health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn call(channel: Channel, method: &'static str, body: Bytes) {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    if grpc.ready().await.is_err() {
        return;
    }
    let path = PathAndQuery::from_static(method);
    if method.ends_with("Stream") {
        let stream = tokio_stream::iter([body]);
        if let Ok(answers) = grpc.streaming(tonic::Request::new(stream), path, Raw).await {
            let mut answers = answers.into_inner();
            while let Ok(Some(())) = answers.message().await {}
        }
    } else {
        let _ = grpc.unary(tonic::Request::new(body), path, Raw).await;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, message)) = data.split_first() else {
        return;
    };
    let h = harness();
    let method = METHODS[usize::from(pick) % METHODS.len()];
    let body = Bytes::copy_from_slice(message);
    let answered = h.rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            call(h.channel.clone(), method, body),
        )
        .await
    });
    assert!(answered.is_ok(), "{method} got no answer within 10 s");
    if pick % 64 == 0 {
        assert!(
            h.rt.block_on(answers(&h.channel)),
            "the node stopped answering"
        );
    }
});
