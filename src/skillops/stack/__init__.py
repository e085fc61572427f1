"""What runs on the team stack's server machine besides MLflow, Prefect and PostgreSQL: the
promotion authority's service, the accounts and roles, the limit on password guesses."""
