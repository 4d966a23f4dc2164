//! The standard gRPC services next to Berth's own: `grpc.health.v1` reports every service
//! SERVING (and NOT_SERVING to watchers once shutdown starts), and server reflection, both
//! `v1` and `v1alpha`, lists the services and serves their descriptors, so generic tools
//! and other languages' clients work without the `.proto` files.

use std::collections::BTreeSet;

use berth_tests::*;
use prost::Message as _;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

const BERTH_SERVICES: [&str; 3] = [
    "berth.v1.Placement",
    "berth.v1.Scheduler",
    "berth.v1.Catalog",
];

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let mut server = TestServer::start().await;
    let mut h = server.health.clone();
    for service in std::iter::once("").chain(BERTH_SERVICES) {
        let resp = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            resp.status(),
            ServingStatus::Serving,
            "health of {service:?}"
        );
    }
    let unknown = h
        .check(HealthCheckRequest {
            service: "berth.v1.Nope".into(),
        })
        .await
        .expect_err("an unknown service is not reported");
    assert_eq!(unknown.code(), Code::NotFound);

    // A watcher sees SERVING, then NOT_SERVING as soon as shutdown begins.
    let mut watch = h
        .watch(HealthCheckRequest {
            service: "berth.v1.Scheduler".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("watch message")
        .expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);
    server.signal_shutdown();
    let next = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("a status change before the deadline")
        .expect("watch message")
        .expect("a second status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    // The open stream would hold the graceful shutdown; close it and the server stops.
    drop(watch);
    server.shutdown().await;
}

/// What the reflection tests need from either version of the protocol.
#[derive(Debug)]
enum Answer {
    Services(Vec<String>),
    Files(Vec<prost_types::FileDescriptorProto>),
    Error(i32, String),
}

/// Generates `ask_<version>`: one request on a fresh `ServerReflectionInfo` stream.
macro_rules! reflection_version {
    ($fn:ident, $module:ident) => {
        async fn $fn(channel: tonic::transport::Channel, host: &str, request: Request) -> Answer {
            use r::server_reflection_request::MessageRequest;
            use r::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$module as r;
            let message_request = match request {
                Request::ListServices => MessageRequest::ListServices(String::new()),
                Request::Symbol(s) => MessageRequest::FileContainingSymbol(s.into()),
                Request::File(f) => MessageRequest::FileByFilename(f.into()),
            };
            let req = r::ServerReflectionRequest {
                host: host.into(),
                message_request: Some(message_request.clone()),
            };
            let mut client = r::server_reflection_client::ServerReflectionClient::new(channel);
            let mut stream = client
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await
                .expect("reflection stream opens")
                .into_inner();
            // tonic-reflection ends the stream with a status for an unknown name rather
            // than sending an ErrorResponse; both mean the same to a client.
            let resp = match stream.message().await {
                Ok(m) => m.expect("one answer per request"),
                Err(status) => {
                    return Answer::Error(status.code() as i32, status.message().to_string());
                }
            };
            assert_eq!(
                resp.original_request.and_then(|o| o.message_request),
                Some(message_request),
                "the answer echoes the request"
            );
            match resp.message_response.expect("an answer") {
                MessageResponse::ListServicesResponse(l) => {
                    Answer::Services(l.service.into_iter().map(|s| s.name).collect())
                }
                MessageResponse::FileDescriptorResponse(f) => Answer::Files(
                    f.file_descriptor_proto
                        .iter()
                        .map(|b| {
                            prost_types::FileDescriptorProto::decode(b.as_slice())
                                .expect("descriptor decodes")
                        })
                        .collect(),
                ),
                MessageResponse::ErrorResponse(e) => Answer::Error(e.error_code, e.error_message),
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
    };
}

#[derive(Debug, Clone, Copy)]
enum Request {
    ListServices,
    Symbol(&'static str),
    File(&'static str),
}

reflection_version!(ask_v1, v1);
reflection_version!(ask_v1alpha, v1alpha);

/// Runs the same checks against one reflection version.
async fn check_reflection<F, Fut>(ask: F, version: &str)
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let Answer::Services(services) = ask(Request::ListServices).await else {
        panic!("{version}: ListServices did not list services");
    };
    let services: BTreeSet<String> = services.into_iter().collect();
    for want in BERTH_SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(
            services.contains(*want),
            "{version}: {want} not in {services:?}"
        );
    }

    // The file declaring the Placement service, with every RPC of the contract.
    let Answer::Files(files) = ask(Request::Symbol("berth.v1.Placement")).await else {
        panic!("{version}: FileContainingSymbol failed");
    };
    let placement = files
        .iter()
        .find(|f| f.name() == "berth/v1/placement.proto")
        .unwrap_or_else(|| panic!("{version}: placement.proto not among {files:?}"));
    assert_eq!(placement.package(), "berth.v1");
    let svc = placement
        .service
        .iter()
        .find(|s| s.name() == "Placement")
        .expect("Placement service");
    let methods: BTreeSet<&str> = svc.method.iter().map(|m| m.name()).collect();
    for m in [
        "CreateResourceProvider",
        "ListResourceProviders",
        "ReplaceAllocations",
        "GetAllocationCandidates",
    ] {
        assert!(methods.contains(m), "{version}: {m} not in {methods:?}");
    }
    let create = svc
        .method
        .iter()
        .find(|m| m.name() == "CreateResourceProvider")
        .expect("method");
    assert_eq!(
        create.input_type(),
        ".berth.v1.CreateResourceProviderRequest"
    );
    assert!(
        placement
            .dependency
            .iter()
            .any(|d| d == "berth/v1/common.proto")
    );

    // Other entry points: a message symbol, a method symbol, a file name.
    let Answer::Files(files) = ask(Request::Symbol("berth.v1.NoValidHostDetail")).await else {
        panic!("{version}: message symbol");
    };
    assert!(files.iter().any(|f| {
        f.name() == "berth/v1/common.proto"
            && f.message_type
                .iter()
                .any(|m| m.name() == "NoValidHostDetail")
    }));
    let Answer::Files(files) = ask(Request::Symbol("berth.v1.Scheduler.SelectDestinations")).await
    else {
        panic!("{version}: method symbol");
    };
    assert!(files.iter().any(|f| f.name() == "berth/v1/scheduler.proto"));
    let Answer::Files(files) = ask(Request::File("berth/v1/catalog.proto")).await else {
        panic!("{version}: FileByFilename");
    };
    assert!(
        files.iter().any(|f| f.name() == "berth/v1/catalog.proto"
            && f.service.iter().any(|s| s.name() == "Catalog"))
    );
    let Answer::Files(files) = ask(Request::Symbol("grpc.health.v1.Health")).await else {
        panic!("{version}: health symbol");
    };
    assert!(!files.is_empty());

    // Unknown names are a NOT_FOUND error naming the symbol.
    match ask(Request::Symbol("berth.v1.DoesNotExist")).await {
        Answer::Error(code, message) => {
            assert_eq!(code, Code::NotFound as i32, "{version}: {message}");
            assert!(message.contains("DoesNotExist"), "{version}: {message}");
        }
        other => panic!("{version}: expected an error answer, got {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_and_describe_services() {
    let server = TestServer::start().await;
    let ch = server.channel.clone();
    check_reflection(|r| ask_v1(ch.clone(), "", r), "v1").await;
    check_reflection(|r| ask_v1alpha(ch.clone(), "", r), "v1alpha").await;
    server.shutdown().await;
}
