//! The coordinator reaches agents on Modal through `https://` tunnels: TLS,
//! HTTP/2 by ALPN, the session secret on every call. Here a TLS gRPC server
//! with a throwaway CA plays the tunnel: the client verifies the
//! certificate, speaks h2 over TLS and sends the secret; a server whose
//! certificate no trusted root signed is refused.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use parhelia::agent_client::connect_agent_with_roots;
use parhelia::ids::SessionSecret;
use parhelia_proto::agent_server::{Agent, AgentServer};
use parhelia_proto::{AgentInfo, GetInfoRequest};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct TunnelAgent {
    auth: Arc<Mutex<Vec<Option<String>>>>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for TunnelAgent {
    type StreamEventsStream = Boxed<parhelia_proto::StreamEventsResponse>;
    type AttachStream = Boxed<parhelia_proto::AttachResponse>;
    type WatchRestoreStream =
        Pin<Box<dyn Stream<Item = Result<parhelia_proto::RestoreProgressUpdate, Status>> + Send>>;

    async fn watch_restore(
        &self,
        _: Request<parhelia_proto::WatchRestoreRequest>,
    ) -> Result<Response<Self::WatchRestoreStream>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn get_info(
        &self,
        request: Request<GetInfoRequest>,
    ) -> Result<Response<AgentInfo>, Status> {
        let auth = request
            .metadata()
            .get(parhelia_proto::AUTH_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.auth.lock().unwrap().push(auth);
        Ok(Response::new(AgentInfo {
            session_id: "sess-7e570001".into(),
            ..AgentInfo::default()
        }))
    }
    async fn stream_events(
        &self,
        _: Request<parhelia_proto::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        Err(Status::unimplemented("not needed"))
    }
    async fn send_input(
        &self,
        _: Request<parhelia_proto::SendInputRequest>,
    ) -> Result<Response<parhelia_proto::SendInputResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
    async fn stop(
        &self,
        _: Request<parhelia_proto::StopRequest>,
    ) -> Result<Response<parhelia_proto::StopResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
    async fn create_checkpoint(
        &self,
        _: Request<parhelia_proto::CreateCheckpointRequest>,
    ) -> Result<Response<parhelia_proto::CreateCheckpointResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
    async fn attach(
        &self,
        _: Request<tonic::Streaming<parhelia_proto::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::unimplemented("not needed"))
    }
    async fn capture_screen(
        &self,
        _: Request<parhelia_proto::CaptureScreenRequest>,
    ) -> Result<Response<parhelia_proto::CaptureScreenResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
}

/// A CA and a `localhost` certificate it signed: (CA PEM, cert PEM, key PEM).
fn certificates() -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn the_agent_client_speaks_tls_with_h2_and_the_secret_and_checks_the_certificate() {
    let (ca, cert, key) = certificates();
    let agent = TunnelAgent::default();
    let auth = Arc::clone(&agent.auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .unwrap()
            .add_service(AgentServer::new(agent))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let uri = format!("https://localhost:{port}");
    let secret = SessionSecret::generate();

    let mut client = connect_agent_with_roots(&uri, &secret, Some(ca.as_bytes()))
        .await
        .expect("TLS connect");
    let info = client
        .get_info(GetInfoRequest {})
        .await
        .expect("get_info over TLS");
    assert_eq!(info.into_inner().session_id, "sess-7e570001");
    assert_eq!(
        auth.lock().unwrap().as_slice(),
        [Some(parhelia_proto::bearer(secret.expose()))],
        "the secret travels with the call"
    );

    // Only the webpki roots: our throwaway CA is not one of them.
    let refused = match connect_agent_with_roots(&uri, &secret, None).await {
        Err(_) => true,
        Ok(mut c) => c.get_info(GetInfoRequest {}).await.is_err(),
    };
    assert!(refused, "a certificate no trusted root signed was accepted");
}
