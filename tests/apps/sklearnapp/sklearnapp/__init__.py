"""sklearnapp: a scikit-learn Flower app (numpy records, federated evaluation only)."""
