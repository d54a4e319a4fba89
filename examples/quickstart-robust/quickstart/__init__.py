"""A plain Flower app on scikit-learn's digits, defended by flwr-byz's RobustStrategy."""
