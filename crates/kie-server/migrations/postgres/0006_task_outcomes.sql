-- GET /api/v1/models/{model}/success-rate reads a model's finished tasks of the last 24 h.
CREATE INDEX tasks_model_completed ON tasks(model, completed_at) WHERE state IN ('success','fail');
