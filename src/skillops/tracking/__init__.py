"""What a run leaves in MLflow: the store and the run's lifecycle (`runs`), registered versions and
the champion alias (`registry`), the reports and charts a run logs (`reports`), and the webhooks
that tell others of a new champion (`webhooks`)."""
