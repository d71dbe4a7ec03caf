//! What the agent's unit tests that need the kernel share.

/// A single-threaded runtime with an rtnetlink connection running on it,
/// in the calling thread's network namespace.
pub fn rtnetlink() -> (tokio::runtime::Runtime, rtnetlink::Handle) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let (connection, handle, _) = {
        let _context = runtime.enter();
        rtnetlink::new_connection().unwrap()
    };
    runtime.spawn(connection);
    (runtime, handle)
}
