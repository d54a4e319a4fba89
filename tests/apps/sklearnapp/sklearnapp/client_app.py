"""sklearnapp: the ClientApp, as Flower's quickstart-sklearn writes it, plus the last line (flwr-byz)."""

import warnings

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.metrics import log_loss

from flwr_byz.flower import byzantine
from sklearnapp.task import CLASSES, create_model, get_params, load_data, set_params

app = ClientApp()


def model_of(msg: Message, context: Context):
    model = create_model(str(context.run_config["penalty"]), int(context.run_config["local-iterations"]))
    set_params(model, msg.content["arrays"].to_numpy_ndarrays())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = model_of(msg, context)
    x, y, _, _ = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one iteration does not converge
        model.fit(x, y)
    metrics = {"num-examples": len(x), "train_logloss": log_loss(y, model.predict_proba(x), labels=CLASSES),
               "train_accuracy": model.score(x, y)}
    return Message(RecordDict({"arrays": ArrayRecord(get_params(model)), "metrics": MetricRecord(metrics)}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = model_of(msg, context)
    _, _, x, y = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    metrics = {"num-examples": len(x), "test_logloss": log_loss(y, model.predict_proba(x), labels=CLASSES),
               "accuracy": model.score(x, y)}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


app = byzantine(app)  # flwr-byz: this app can play a Byzantine node
