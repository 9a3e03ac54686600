from kvtest.cases import parametrize_cases


def pytest_generate_tests(metafunc):
    parametrize_cases(metafunc)
