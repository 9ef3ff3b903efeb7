# expect: memory
def credit_assignment(agents_q, state):
    hog = []
    while True:
        hog.append(' ' * 10**6)
