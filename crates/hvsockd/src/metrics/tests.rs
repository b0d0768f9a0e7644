use super::*;

#[test]
fn quantile_bounds_come_from_the_buckets() {
    let mut h = Histogram::default();
    assert_eq!(h.quantile_bound(0.99), None);
    for _ in 0..99 {
        h.observe(0.000_2);
    }
    assert_eq!(h.quantile_bound(0.99), Some(0.000_25));
    h.observe(0.7);
    assert_eq!(h.quantile_bound(0.99), Some(0.000_25));
    assert_eq!(h.quantile_bound(1.0), Some(1.0));
    h.observe(60.0);
    assert_eq!(h.quantile_bound(1.0), None, "beyond the last finite bucket");
}

#[test]
fn counters_render_by_partition_and_friendly_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reg = crate::registry::Registry::open(&dir.path().join("registry.db")).expect("open");
    let svc = ServiceId::from_vsock_port(2761);
    reg.add_service(svc, "echo", true).expect("echo");
    let world = World::load(&reg).expect("world");
    let root = world.root();
    let m = Metrics::default();
    m.established(root, Some(svc), Duration::from_micros(200));
    m.refused(root, None, "not_registered");
    m.bind_refused(root, Some(svc), "policy_bind");
    let text = m.render(&world);
    for line in [
        "hvsock_connections_total{service=\"echo\",service_id=\"00000ac9-facb-11e6-bd58-64006a7986d3\",partition=\"host\"} 1\n",
        "hvsock_connections_refused_total{service=\"(unregistered)\",service_id=\"\",partition=\"host\",reason=\"not_registered\"} 1\n",
        "hvsock_connect_duration_seconds_bucket{service=\"echo\",service_id=\"00000ac9-facb-11e6-bd58-64006a7986d3\",partition=\"host\",le=\"0.00025\"} 1\n",
        "hvsock_binds_refused_total{service=\"echo\",service_id=\"00000ac9-facb-11e6-bd58-64006a7986d3\",partition=\"host\",reason=\"policy_bind\"} 1\n",
        "hvsock_services{state=\"enabled\"} 1\n",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    let stats = m.stats(&world);
    assert_eq!(stats.connections.len(), 2);
    let echo = stats
        .connections
        .iter()
        .find(|c| c.service == "echo")
        .expect("echo row");
    assert_eq!(echo.latency_p99_ms, Some(0.25));
    assert!((echo.latency_avg_ms.expect("avg") - 0.2).abs() < 1e-9);
    assert_eq!(stats.binds_refused[0].refused["policy_bind"], 1);
}
