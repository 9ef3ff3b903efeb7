# expect: contract
credit_assignment = 5
