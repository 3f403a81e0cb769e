"""Model registry (MLflow), roles as aliases, promotion and rollback with an audit trail."""
