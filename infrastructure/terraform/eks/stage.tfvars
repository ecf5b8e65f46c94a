environment = "stage"
region      = "us-east-1"
