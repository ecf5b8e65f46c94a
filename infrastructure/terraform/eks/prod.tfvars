environment = "prod"
region      = "us-east-1"
gpu_spot_max  = 8
gpu_on_demand = { min = 1, desired = 2, max = 4 }
cpu_nodes     = { min = 3, desired = 4, max = 12 }
db_instance_class = "db.m7g.large"
