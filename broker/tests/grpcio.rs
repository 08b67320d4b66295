//! Standard clients reach a node: Python grpcio (BoringSSL, hostname checks)
//! lists services through server reflection v1alpha and v1 and calls the
//! standard health service over mTLS with a federation user certificate.
//! `scripts/test.sh` installs grpcio; without it this test fails, by design.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use std::sync::Arc;

const SCRIPT: &str = r#"
import sys, grpc
root, crt, key, target, alpha = sys.argv[1:6]
creds = grpc.ssl_channel_credentials(
    root_certificates=open(root, 'rb').read(),
    private_key=open(key, 'rb').read(),
    certificate_chain=open(crt, 'rb').read())
ch = grpc.secure_channel(target, creds)
# grpcio-reflection ships v1alpha messages; v1 has the same wire format.
from grpc_reflection.v1alpha import reflection_pb2 as r
pkg = 'v1alpha' if alpha == '1' else 'v1'
call = ch.stream_stream(
    '/grpc.reflection.%s.ServerReflection/ServerReflectionInfo' % pkg,
    request_serializer=r.ServerReflectionRequest.SerializeToString,
    response_deserializer=r.ServerReflectionResponse.FromString)
resp = call(iter([r.ServerReflectionRequest(list_services='')]), timeout=10)
names = sorted(s.name for m in resp for s in m.list_services_response.service)
from grpc_health.v1 import health_pb2, health_pb2_grpc
st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=''), timeout=10)
print(' '.join(names))
print('health', health_pb2.HealthCheckResponse.ServingStatus.Name(st.status))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_uses_reflection_and_health_over_mtls() {
    let mut spec = SandboxSpec::munich();
    spec.orgs.truncate(3);
    let sb = Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap();
    let node = sb.node("tum-1").unwrap();
    let target = format!("localhost:{}", node.grpc_addr.port());
    let p = sb.profile("tum", "alice").unwrap();
    for alpha in ["1", "0"] {
        let out = tokio::process::Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(&p.root_ca)
            .arg(&p.cert)
            .arg(&p.key)
            .arg(&target)
            .arg(alpha)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python grpcio failed (scripts/test.sh installs grpcio): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for s in [
            "allmende.v1.Federation",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                stdout.contains(s),
                "v1alpha={alpha}: {s} missing from {stdout}"
            );
        }
        for s in [
            "Access",
            "Audit",
            "Catalog",
            "Connectors",
            "Consent",
            "Policy",
        ] {
            assert!(
                stdout.contains(&format!("allmende.v1.{s}")),
                "{s} not advertised: {stdout}"
            );
        }
        assert!(stdout.contains("health SERVING"), "{stdout}");
    }
    sb.shutdown().await.unwrap();
}
