//! What the runtime knows about its sandboxes and containers, kept on disk so that a
//! restarted daemon finds everything it created (containers keep running meanwhile:
//! their monitors do not depend on the daemon).
pub mod records;
