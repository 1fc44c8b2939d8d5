"""The research bench: the articles' experiments (`study`, with its `report`) and the race
against what a user could run instead (`compete`), on one `harness`. It uses the product
(export, models, runtime); the product never imports it."""
